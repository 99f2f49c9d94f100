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

use std::borrow::Cow;

use super::Element;
use crate::Limits;

/// The tree of `text` when it lies in the plain subset, else `None`.
pub(super) fn parse<'a>(text: &'a str, limits: &Limits) -> Option<Element<'a>> {
    let mut s = Scanner {
        b: text.as_bytes(),
        text,
        pos: 0,
    };
    s.declaration()?;
    let mut stack: Vec<Element<'a>> = Vec::new();
    let mut root: Option<Element<'a>> = None;
    let mut elements = 0usize;
    loop {
        s.skip_ws();
        if s.pos == s.b.len() {
            break;
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
            let el = stack.pop()?;
            if el.name != name {
                return None;
            }
            attach(&mut stack, &mut root, el);
            continue;
        }
        if root.is_some() && stack.is_empty() {
            return None; // a second root
        }
        let name = s.name()?;
        elements += 1;
        if elements > limits.max_elements || stack.len() + 1 > limits.max_depth {
            return None;
        }
        let mut el = Element {
            name: Cow::Borrowed(name),
            attrs: Vec::new(),
            children: Vec::new(),
        };
        loop {
            let spaced = s.skip_ws() > 0;
            match s.peek()? {
                b'>' => {
                    s.pos += 1;
                    stack.push(el);
                    break;
                }
                b'/' => {
                    s.pos += 1;
                    s.expect(b'>')?;
                    attach(&mut stack, &mut root, el);
                    break;
                }
                _ if spaced => {
                    let key = s.name()?;
                    s.expect(b'=')?;
                    let value = s.value()?;
                    if el.attrs.len() >= limits.max_attributes
                        || el.attrs.iter().any(|(k, _)| k == key)
                    {
                        return None;
                    }
                    el.attrs.push((Cow::Borrowed(key), Cow::Borrowed(value)));
                }
                _ => return None,
            }
        }
    }
    if !stack.is_empty() {
        return None;
    }
    root
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
        let end = self.text.find("?>")?;
        let inner = &self.b[6..end];
        if !inner
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || b" =\"'._-".contains(&c))
        {
            return None;
        }
        self.pos = end + 2;
        Some(())
    }

    /// A name of ASCII letters, digits, `_`, `-` and `.`, starting with a letter or `_`
    /// (a subset of what XML and our writer accept).
    fn name(&mut self) -> Option<&'a str> {
        let start = self.pos;
        match self.peek()? {
            c if c.is_ascii_alphabetic() || c == b'_' => self.pos += 1,
            _ => return None,
        }
        while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
        {
            self.pos += 1;
        }
        Some(&self.text[start..self.pos])
    }

    /// A quoted value that needs no decoding or normalisation.
    fn value(&mut self) -> Option<&'a str> {
        let quote = self.peek()?;
        if quote != b'"' && quote != b'\'' {
            return None;
        }
        let start = self.pos + 1;
        // One pass: up to the closing quote, declining at the first byte that needs the full
        // parser.
        let len = self.b[start..]
            .iter()
            .position(|&c| c == quote || matches!(c, b'<' | b'&' | b'\t' | b'\n' | b'\r'))?;
        if self.b[start + len] != quote {
            return None;
        }
        self.pos = start + len + 1;
        // Quotes and the bytes refused above are ASCII: the slice ends on boundaries.
        Some(&self.text[start..start + len])
    }
}
