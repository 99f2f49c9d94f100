//! The fast path of [`super::parse_tree`]: a direct scan for the plain documents every
//! Omaha client sends (elements and double- or single-quoted attributes, an optional
//! `<?xml ...?>` declaration, whitespace between tags), borrowing names and values
//! from the input instead of copying them.
//!
//! It never decides that a document is bad: anything outside that subset (entity or
//! character references, comments, CDATA, DTDs, processing instructions, text
//! content, whitespace around `=`, a control character inside a value, unusual names,
//! a duplicate attribute, a mismatched end tag, a limit reached) makes it decline, and
//! the full quick-xml parser decides. When it accepts, its tree equals the full
//! parser's (the `omaha_request` fuzz target checks this on every input).
//!
//! The scan yields tags ([`Tags`]): [`parse`] builds the tree from them, and the request's
//! direct path (`request/fast.rs`) reads them into a `Request` without one.

use std::borrow::Cow;

use super::Element;
use crate::Limits;

/// One step of a plain document, as [`Tags`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tag<'a> {
    /// A start tag (its attributes are [`Tags::attrs`] until the next step); `true` when it
    /// closes itself (`<a/>`).
    Start(&'a str, bool),
    /// The end tag of the innermost open element.
    End,
    /// The end of the document, every element closed.
    Eof,
}

/// The tags of a document in the plain subset, in order. `None` from [`Tags::next`] means the
/// document leaves the subset (or breaks a limit) and the full parser must decide. Start and
/// end tags are checked to match, and there is one root, so a reader of the tags sees a
/// well-formed document.
pub(crate) struct Tags<'a> {
    s: Scanner<'a>,
    limits: Limits,
    /// The names of the open elements.
    open: Vec<&'a str>,
    /// The last start tag's attributes.
    attrs: Vec<(&'a str, &'a str)>,
    elements: usize,
    root_done: bool,
}

impl<'a> Tags<'a> {
    /// Reads the `<?xml ...?>` declaration, if any.
    pub(crate) fn new(text: &'a str, limits: &Limits) -> Option<Self> {
        let mut s = Scanner {
            b: text.as_bytes(),
            text,
            pos: 0,
        };
        s.declaration()?;
        Some(Tags {
            s,
            limits: *limits,
            open: Vec::new(),
            attrs: Vec::new(),
            elements: 0,
            root_done: false,
        })
    }

    /// The attributes of the last [`Tag::Start`], in document order, names unique.
    pub(crate) fn attrs(&self) -> &[(&'a str, &'a str)] {
        &self.attrs
    }

    pub(crate) fn next(&mut self) -> Option<Tag<'a>> {
        let s = &mut self.s;
        s.skip_ws();
        if s.pos == s.b.len() {
            return (self.open.is_empty() && self.root_done).then_some(Tag::Eof);
        }
        if s.b[s.pos] != b'<' {
            return None; // text content
        }
        s.pos += 1;
        if s.peek() == Some(b'/') {
            s.pos += 1;
            let name = s.name()?;
            s.skip_ws();
            s.expect(b'>')?;
            if self.open.pop()? != name {
                return None;
            }
            self.root_done = self.open.is_empty();
            return Some(Tag::End);
        }
        if self.root_done {
            return None; // a second root
        }
        let name = s.name()?;
        self.elements += 1;
        if self.elements > self.limits.max_elements || self.open.len() + 1 > self.limits.max_depth {
            return None;
        }
        self.attrs.clear();
        let self_closing = loop {
            let spaced = s.skip_ws() > 0;
            match s.peek()? {
                b'>' => {
                    s.pos += 1;
                    break false;
                }
                b'/' => {
                    s.pos += 1;
                    s.expect(b'>')?;
                    break true;
                }
                _ if spaced => {
                    let key = s.name()?;
                    s.expect(b'=')?;
                    let value = s.value()?;
                    if self.attrs.len() >= self.limits.max_attributes
                        || self.attrs.iter().any(|&(k, _)| k == key)
                    {
                        return None;
                    }
                    self.attrs.push((key, value));
                }
                _ => return None,
            }
        };
        if self_closing {
            self.root_done = self.open.is_empty();
        } else {
            self.open.push(name);
        }
        Some(Tag::Start(name, self_closing))
    }
}

/// The tree of `text` when it lies in the plain subset, else `None`.
pub(super) fn parse<'a>(text: &'a str, limits: &Limits) -> Option<Element<'a>> {
    let mut tags = Tags::new(text, limits)?;
    let mut stack: Vec<Element<'a>> = Vec::new();
    let mut root: Option<Element<'a>> = None;
    loop {
        match tags.next()? {
            Tag::Eof => return root,
            Tag::End => {
                let el = stack.pop()?;
                attach(&mut stack, &mut root, el);
            }
            Tag::Start(name, self_closing) => {
                // The attributes move into the element in one exact-size allocation.
                let el = Element {
                    name: Cow::Borrowed(name),
                    attrs: tags
                        .attrs()
                        .iter()
                        .map(|&(k, v)| (Cow::Borrowed(k), Cow::Borrowed(v)))
                        .collect(),
                    children: Vec::new(),
                };
                if self_closing {
                    attach(&mut stack, &mut root, el);
                } else {
                    stack.push(el);
                }
            }
        }
    }
}

fn attach<'a>(stack: &mut [Element<'a>], root: &mut Option<Element<'a>>, el: Element<'a>) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(el),
        None => *root = Some(el),
    }
}

struct Scanner<'a> {
    b: &'a [u8],
    text: &'a str,
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.pos += 1)
    }

    /// Skips XML whitespace; how many bytes.
    fn skip_ws(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// `<?xml version="1.0" encoding="UTF-8"?>` at the very start, made of plain
    /// characters only; any other `<?` declines.
    fn declaration(&mut self) -> Option<()> {
        if !self.b.starts_with(b"<?xml ") {
            return Some(());
        }
        // One pass over the plain characters; the first other byte must start `?>`.
        let end = 6 + self.b[6..]
            .iter()
            .position(|&c| CLASS[usize::from(c)] & DECLARATION == 0)?;
        if !self.b[end..].starts_with(b"?>") {
            return None;
        }
        self.pos = end + 2;
        Some(())
    }

    /// A name of ASCII letters, digits, `_`, `-` and `.`, starting with a letter or `_`
    /// (a subset of what XML and our writer accept).
    fn name(&mut self) -> Option<&'a str> {
        let start = self.pos;
        if CLASS[usize::from(self.peek()?)] & NAME_START == 0 {
            return None;
        }
        let len = self.b[start + 1..]
            .iter()
            .position(|&c| CLASS[usize::from(c)] & NAME == 0)
            .unwrap_or(self.b.len() - start - 1);
        self.pos = start + 1 + len;
        // Name bytes are ASCII: the slice ends on boundaries.
        Some(&self.text[start..self.pos])
    }

    /// A quoted value that needs no decoding or normalisation.
    fn value(&mut self) -> Option<&'a str> {
        let quote = self.peek()?;
        if quote != b'"' && quote != b'\'' {
            return None;
        }
        let start = self.pos + 1;
        let len = memchr::memchr(quote, &self.b[start..])?;
        let value = &self.b[start..start + len];
        // Declines at any byte that needs the full parser: one pass with no early exit
        // (the compiler vectorises it; values are short and almost never hold one).
        if value.iter().fold(false, |acc, &c| {
            acc | matches!(c, b'<' | b'&' | b'\t' | b'\n' | b'\r')
        }) {
            return None;
        }
        self.pos = start + len + 1;
        // Quotes are ASCII: the slice ends on boundaries.
        Some(&self.text[start..start + len])
    }
}

/// Byte classes for the scanner, one table lookup per byte.
const NAME_START: u8 = 1;
const NAME: u8 = 2;
/// Bytes inside `<?xml ...?>` that the fast path accepts.
const DECLARATION: u8 = 4;

static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        if b.is_ascii_alphabetic() || b == b'_' {
            t[c] |= NAME_START | NAME;
        }
        if b.is_ascii_digit() || b == b'-' || b == b'.' {
            t[c] |= NAME;
        }
        if b.is_ascii_alphanumeric() || matches!(b, b' ' | b'=' | b'"' | b'\'' | b'.' | b'_' | b'-')
        {
            t[c] |= DECLARATION;
        }
        c += 1;
    }
    t
};
