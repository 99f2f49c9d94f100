//! A minimal, bounded XML element tree on top of quick-xml, and a small writer.
//!
//! Omaha v3 carries everything in attributes, so the tree keeps element names,
//! attributes and children and drops text. Documents with a DTD are refused
//! outright: no internal subset, no external entities, nothing to expand. Only
//! the five predefined entities and character references are resolved.

use std::borrow::Cow;

use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

use crate::{Limits, ParseError};

pub(crate) mod fast;

/// One parsed element: name, attributes in document order, child elements. Names and
/// values borrow from the input where the fast path read them as they stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Element<'a> {
    pub name: Cow<'a, str>,
    pub attrs: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    pub children: Vec<Element<'a>>,
}

impl<'a> Element<'a> {
    /// The value of an attribute; names are case-sensitive, as Flatcar expects.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_ref())
    }

    pub fn attr_owned(&self, name: &str) -> Option<String> {
        self.attr(name).map(str::to_owned)
    }

    /// The first child element named `name`, mutably.
    pub fn child_mut(&mut self, name: &str) -> Option<&mut Element<'a>> {
        self.children.iter_mut().find(|c| c.name == name)
    }

    pub fn children_named<'s>(
        &'s self,
        name: &'s str,
    ) -> impl Iterator<Item = &'s Element<'a>> + 's {
        self.children.iter().filter(move |c| c.name == name)
    }

    pub fn child(&self, name: &str) -> Option<&Element<'a>> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Attributes whose names are not in `known`, in document order.
    pub fn extra_attrs(&self, known: &[&str]) -> Vec<(String, String)> {
        self.attrs
            .iter()
            .filter(|(k, _)| !known.contains(&k.as_ref()))
            .map(|(k, v)| (k.clone().into_owned(), v.clone().into_owned()))
            .collect()
    }
}

/// Parses `input` into an element tree, enforcing `limits` as it goes: the fast path
/// for plain documents, else the full parser.
pub(crate) fn parse_tree<'a>(input: &'a [u8], limits: &Limits) -> Result<Element<'a>, ParseError> {
    parse_checked(checked_text(input, limits)?, limits)
}

/// [`parse_tree`] of a text [`checked_text`] passed.
pub(crate) fn parse_checked<'a>(text: &'a str, limits: &Limits) -> Result<Element<'a>, ParseError> {
    match fast::parse(text, limits) {
        Some(tree) => Ok(tree),
        None => parse_full(text, limits),
    }
}

/// Whether the fast path accepts `input`, and if so whether its tree equals the full
/// parser's (for the fuzz target; `None` when the fast path declines).
#[doc(hidden)]
pub fn fast_path_agrees(input: &[u8], limits: &Limits) -> Option<bool> {
    let text = checked_text(input, limits).ok()?;
    let fast = fast::parse(text, limits)?;
    Some(parse_full(text, limits).as_ref() == Ok(&fast))
}

/// The size limit, UTF-8 and the characters XML 1.0 forbids.
pub(crate) fn checked_text<'a>(input: &'a [u8], limits: &Limits) -> Result<&'a str, ParseError> {
    if input.len() > limits.max_bytes {
        return Err(ParseError::TooLarge {
            size: input.len(),
            limit: limits.max_bytes,
        });
    }
    let text = std::str::from_utf8(input).map_err(|_| ParseError::NotUtf8)?;
    // What XML 1.0 forbids (C0 controls, U+FFFE/U+FFFF) is refused, not passed on: a value
    // holding one could not be written back as XML.
    check_text(text)?;
    Ok(text)
}

/// The full parser (quick-xml): every document the fast path declines.
fn parse_full(text: &str, limits: &Limits) -> Result<Element<'static>, ParseError> {
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    reader.config_mut().allow_unmatched_ends = false;

    let mut stack: Vec<Element<'static>> = Vec::new();
    let mut root: Option<Element<'static>> = None;
    let mut elements = 0usize;

    loop {
        let event = reader.read_event().map_err(|e| ParseError::Xml {
            position: reader.buffer_position(),
            message: e.to_string(),
        })?;
        match event {
            Event::Start(start) | Event::Empty(start) if root.is_some() && stack.is_empty() => {
                let _ = start;
                return Err(ParseError::Malformed("content after the root element"));
            }
            Event::Start(start) => {
                elements += 1;
                check_counts(elements, stack.len() + 1, limits)?;
                stack.push(element_from(&start, limits)?);
            }
            Event::Empty(start) => {
                elements += 1;
                check_counts(elements, stack.len() + 1, limits)?;
                let el = element_from(&start, limits)?;
                attach(&mut stack, &mut root, el);
            }
            Event::End(_) => {
                let el = stack
                    .pop()
                    .ok_or(ParseError::Malformed("closing tag without an opening tag"))?;
                attach(&mut stack, &mut root, el);
            }
            Event::DocType(_) => return Err(ParseError::DtdRefused),
            Event::Text(t) => {
                if stack.is_empty() && !t.bytes().all(|b| b.is_ascii_whitespace()) {
                    return Err(ParseError::Malformed("text outside the root element"));
                }
            }
            Event::CData(_) | Event::GeneralRef(_) => {
                if stack.is_empty() {
                    return Err(ParseError::Malformed("text outside the root element"));
                }
            }
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(ParseError::Malformed("document ends inside an element"));
    }
    root.ok_or(ParseError::Malformed("no root element"))
}

/// [`check_chars`] over a whole document, a byte at a time: in UTF-8 the only
/// characters XML 1.0 forbids are the C0 controls other than tab, newline and carriage
/// return (single bytes below 0x20) and U+FFFE / U+FFFF (`EF BF BE`, `EF BF BF`);
/// surrogates cannot occur in a `str`.
fn check_text(text: &str) -> Result<(), ParseError> {
    let b = text.as_bytes();
    // The common case in one pass without an early exit (the compiler vectorises it):
    // no control byte and no 0xEF at all.
    let suspect = b.iter().fold(false, |acc, &c| {
        acc | (c < 0x20 && c != b'\t' && c != b'\n' && c != b'\r') | (c == 0xEF)
    });
    if !suspect {
        return Ok(());
    }
    let bad = b.iter().enumerate().position(|(i, &c)| {
        (c < 0x20 && !matches!(c, b'\t' | b'\n' | b'\r'))
            || (c == 0xEF
                && b.get(i + 1) == Some(&0xBF)
                && matches!(b.get(i + 2), Some(0xBE | 0xBF)))
    });
    match bad {
        // Both kinds start on a character boundary.
        Some(i) => check_chars(&text[i..], |_| format!("at byte {i}")),
        None => Ok(()),
    }
}

fn check_chars(text: &str, place: impl FnOnce(usize) -> String) -> Result<(), ParseError> {
    match text.char_indices().find(|(_, c)| !is_xml_char(*c)) {
        Some((i, c)) => Err(ParseError::ForbiddenChar {
            code: u32::from(c),
            place: place(i),
        }),
        None => Ok(()),
    }
}

fn check_counts(elements: usize, depth: usize, limits: &Limits) -> Result<(), ParseError> {
    if elements > limits.max_elements {
        return Err(ParseError::LimitExceeded("too many elements"));
    }
    if depth > limits.max_depth {
        return Err(ParseError::LimitExceeded("elements nested too deeply"));
    }
    Ok(())
}

fn attach(
    stack: &mut [Element<'static>],
    root: &mut Option<Element<'static>>,
    el: Element<'static>,
) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(el),
        None => *root = Some(el),
    }
}

fn element_from(start: &BytesStart<'_>, limits: &Limits) -> Result<Element<'static>, ParseError> {
    let qname = start.name();
    let name: &str = qname.as_ref();
    let name = Cow::Owned(name.to_owned());
    let mut attrs = Vec::new();
    for attr in start.attributes() {
        let attr = attr.map_err(|e| ParseError::Xml {
            position: 0,
            message: e.to_string(),
        })?;
        if attrs.len() >= limits.max_attributes {
            return Err(ParseError::LimitExceeded(
                "too many attributes on one element",
            ));
        }
        let key: &str = attr.key.as_ref();
        let key = key.to_owned();
        // The names the writer can write back (found by fuzzing: `a%b` parsed and was lost).
        if !is_xml_name(&key) {
            return Err(ParseError::Xml {
                position: 0,
                message: format!(
                    "attribute name {key:?} is not accepted (ASCII letters, digits, _ - . :)"
                ),
            });
        }
        let value = attr
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|e| ParseError::Xml {
                position: 0,
                message: e.to_string(),
            })?;
        // Character references can name forbidden characters too (`&#17;`); a value
        // left as it was is part of the document, checked already.
        let value = match value {
            Cow::Borrowed(v) => v.to_owned(),
            Cow::Owned(v) => {
                check_chars(&v, |_| format!("in the value of {key}"))?;
                v
            }
        };
        attrs.push((Cow::Owned(key), Cow::Owned(value)));
    }
    Ok(Element {
        name,
        attrs,
        children: Vec::new(),
    })
}

/// A tiny XML writer: explicit closing tags (`<ping></ping>`) like update_engine
/// and Nebraska write them, attributes in the order given.
pub(crate) struct Writer {
    out: String,
    open: Vec<&'static str>,
    in_start_tag: bool,
}

impl Writer {
    pub fn new() -> Self {
        let mut out = String::with_capacity(1024);
        out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        Writer {
            out,
            open: Vec::new(),
            in_start_tag: false,
        }
    }

    fn finish_start_tag(&mut self) {
        if self.in_start_tag {
            self.out.push('>');
            self.in_start_tag = false;
        }
    }

    /// Opens `<name`; attributes may follow until the next open/close.
    pub fn open(&mut self, name: &'static str) -> &mut Self {
        self.finish_start_tag();
        self.out.push('<');
        self.out.push_str(name);
        self.open.push(name);
        self.in_start_tag = true;
        self
    }

    pub fn attr(&mut self, name: &str, value: &str) -> &mut Self {
        debug_assert!(self.in_start_tag, "attribute written outside a start tag");
        self.out.push(' ');
        self.out.push_str(name);
        self.out.push_str("=\"");
        escape_attr_into(&mut self.out, value);
        self.out.push('"');
        self
    }

    pub fn opt_attr(&mut self, name: &str, value: Option<&str>) -> &mut Self {
        if let Some(v) = value {
            self.attr(name, v);
        }
        self
    }

    pub fn attrs(&mut self, extra: &[(impl AsRef<str>, impl AsRef<str>)]) -> &mut Self {
        for (k, v) in extra {
            let (k, v) = (k.as_ref(), v.as_ref());
            if is_xml_name(k) {
                self.attr(k, v);
            }
        }
        self
    }

    pub fn close(&mut self) -> &mut Self {
        self.finish_start_tag();
        if let Some(name) = self.open.pop() {
            self.out.push_str("</");
            self.out.push_str(name);
            self.out.push('>');
        }
        self
    }

    pub fn finish(mut self) -> String {
        while !self.open.is_empty() {
            self.close();
        }
        self.out.push('\n');
        self.out
    }
}

/// Escapes an attribute value. Tab, CR and LF become character references so
/// attribute-value normalisation on the other side gives back the same string.
/// Characters XML 1.0 cannot carry at all are dropped.
fn escape_attr_into(out: &mut String, value: &str) {
    // The usual value (ASCII, nothing to escape) in one copy; the check has no early exit,
    // so the compiler vectorises it.
    let plain = value.bytes().fold(true, |acc, b| {
        acc & ((0x20..0x80).contains(&b) && !matches!(b, b'&' | b'<' | b'>' | b'"' | b'\''))
    });
    if plain {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if is_xml_char(c) => out.push(c),
            _ => {}
        }
    }
}

/// XML 1.0 `Char` production.
pub(crate) fn is_xml_char(c: char) -> bool {
    matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// A conservative check for names we are willing to write as attribute names.
fn is_xml_name(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Found by the fuzz targets: a control character in an attribute parsed, then could not
    // be written back, so a request changed across parse + write.
    #[test]
    fn characters_xml_forbids_are_refused_raw_or_as_references() {
        for doc in [
            "<request protocol=\"3.0\" version=\"a\u{11}b\"></request>",
            "<request protocol=\"3.0\" version=\"a&#17;b\"></request>",
            "<request protocol=\"3.0\" version=\"a&#0;b\"></request>",
            "<request protocol=\"3.0\"><app appid=\"x\u{0}\"></app></request>",
            "<request protocol=\"3.0\">\u{FFFE}</request>",
        ] {
            let err = parse_tree(doc.as_bytes(), &Limits::default()).unwrap_err();
            assert!(
                matches!(err, ParseError::ForbiddenChar { .. })
                    || matches!(err, ParseError::Xml { .. }),
                "{doc:?}: {err}"
            );
        }
        let err = parse_tree(b"<a x=\"1&#17;\"></a>", &Limits::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "character U+0011 is not allowed in XML 1.0 (in the value of x)"
        );
        let err = parse_tree(b"<a b%c=\"1\"></a>", &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("attribute name \"b%c\""), "{err}");
        let ok = "<a x=\"tab&#9;nl&#10;\">\t\r\n</a>";
        assert!(parse_tree(ok.as_bytes(), &Limits::default()).is_ok());
    }

    #[test]
    fn writer_escapes_and_closes() {
        let mut w = Writer::new();
        w.open("a").attr("x", "<\"&'>\t\n").open("b").close();
        let s = w.finish();
        assert!(s.ends_with("<a x=\"&lt;&quot;&amp;&apos;&gt;&#9;&#10;\"><b></b></a>\n"));
        let tree = parse_tree(s.as_bytes(), &Limits::default()).unwrap();
        assert_eq!(tree.attr("x"), Some("<\"&'>\t\n"));
        assert_eq!(tree.children.len(), 1);
        // Plain ASCII is copied as it stands; anything else goes character by character:
        // non-ASCII kept, what XML 1.0 cannot carry dropped.
        let mut w = Writer::new();
        w.open("a")
            .attr("p", "{E96281A6-d1af} 3815.2.0_x86-64 ok=1")
            .attr("u", "é\u{1}x\u{FFFE}y\u{7f}");
        assert!(w
            .finish()
            .ends_with("<a p=\"{E96281A6-d1af} 3815.2.0_x86-64 ok=1\" u=\"éxy\u{7f}\"></a>\n"));
    }

    #[test]
    fn refuses_doctype() {
        let doc = br#"<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r a="&x;"/>"#;
        assert_eq!(
            parse_tree(doc, &Limits::default()),
            Err(ParseError::DtdRefused)
        );
    }

    #[test]
    fn unknown_entity_is_an_error() {
        let doc = br#"<r a="&x;"/>"#;
        assert!(matches!(
            parse_tree(doc, &Limits::default()),
            Err(ParseError::Xml { .. })
        ));
    }

    #[test]
    fn limits() {
        let limits = Limits {
            max_depth: 3,
            ..Limits::default()
        };
        assert!(parse_tree(b"<a><b><c/></b></a>", &limits).is_ok());
        assert_eq!(
            parse_tree(b"<a><b><c><d/></c></b></a>", &limits),
            Err(ParseError::LimitExceeded("elements nested too deeply"))
        );
        let limits = Limits {
            max_bytes: 10,
            ..Limits::default()
        };
        assert!(matches!(
            parse_tree(b"<aaaaaaaaaaaaaaa/>", &limits),
            Err(ParseError::TooLarge { .. })
        ));
    }

    #[test]
    fn structure_errors() {
        for doc in [
            &b""[..],
            b"<a>",
            b"<a></b>",
            b"</a>",
            b"<a/><b/>",
            b"junk<a/>",
            b"<a x='1' x='2'/>",
            b"\xff\xfe",
        ] {
            assert!(parse_tree(doc, &Limits::default()).is_err(), "{doc:?}");
        }
    }
}
