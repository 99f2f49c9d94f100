//! The direct path of [`Request::parse_with_limits`]: the request every client sends
//! (`<request>` holding at most one `<os>` and its `<app>`s, each holding at most one `<ping>`
//! and one `<updatecheck>`, and its `<event>`s) read straight from the tags into a
//! [`Request`], with no element tree in between.
//!
//! Like the fast scanner under it, it never decides that a request is bad: any other element,
//! a second `<os>`, `<ping>` or `<updatecheck>`, a child inside one of them, a missing `appid`,
//! a wrong `protocol`, a bad event or a limit reached makes it decline, and the tree path
//! decides. The attributes go where they belong through the same functions the tree path
//! uses. When it accepts, its request equals the tree path's (the `omaha_request` fuzz
//! target checks this on every input).

use super::{
    app_attr, os_attr, parse_event, ping_attr, request_attr, update_check_attr, Request,
    RequestApp, Text,
};
use crate::xml::fast::{Tag, Tags};
use crate::{Limits, PROTOCOL_VERSION};

/// The request in `text` (already through `checked_text`), or `None`: let the tree decide.
pub(super) fn parse<'a>(text: &'a str, limits: &Limits) -> Option<Request<'a>> {
    let mut tags = Tags::new(text, limits)?;
    let Tag::Start("request", closed) = tags.next()? else {
        return None;
    };
    let mut req = Request::default();
    let mut protocol = None;
    for &(key, value) in tags.attrs() {
        request_attr(&mut req, &mut protocol, key.into(), value.into());
    }
    req.protocol = protocol.filter(|p| p == PROTOCOL_VERSION)?;
    if !closed {
        loop {
            match tags.next()? {
                Tag::End => break,
                Tag::Start("os", closed) if req.os.is_none() => {
                    req.os = Some(leaf(&mut tags, closed, os_attr)?);
                }
                Tag::Start("app", closed) if req.apps.len() < limits.max_apps => {
                    req.apps.push(app(&mut tags, closed, limits)?);
                }
                _ => return None,
            }
        }
    }
    (tags.next()? == Tag::Eof).then_some(req)
}

/// One `<app>`, its start tag just read.
fn app<'a>(tags: &mut Tags<'a>, closed: bool, limits: &Limits) -> Option<RequestApp<'a>> {
    let mut out = RequestApp::default();
    let mut appid = None;
    for &(key, value) in tags.attrs() {
        app_attr(&mut out, &mut appid, key.into(), value.into());
    }
    out.appid = appid?;
    if closed {
        return Some(out);
    }
    loop {
        match tags.next()? {
            Tag::End => return Some(out),
            Tag::Start("ping", closed) if out.ping.is_none() => {
                out.ping = Some(leaf(tags, closed, ping_attr)?);
            }
            Tag::Start("updatecheck", closed) if out.update_check.is_none() => {
                out.update_check = Some(leaf(tags, closed, update_check_attr)?);
            }
            Tag::Start("event", closed) if out.events.len() < limits.max_events_per_app => {
                let attrs = tags.attrs();
                let event =
                    parse_event(|name| attrs.iter().find(|(k, _)| *k == name).map(|&(_, v)| v))
                        .ok()?;
                out.events.push(event);
                end_of_leaf(tags, closed)?;
            }
            _ => return None,
        }
    }
}

/// An element with no children, its start tag just read: `set` places each attribute.
fn leaf<'a, T: Default>(
    tags: &mut Tags<'a>,
    closed: bool,
    set: impl Fn(&mut T, &str, Text<'a>),
) -> Option<T> {
    let mut out = T::default();
    for &(key, value) in tags.attrs() {
        set(&mut out, key, value.into());
    }
    end_of_leaf(tags, closed)?;
    Some(out)
}

/// The end of an element that must have no children.
fn end_of_leaf(tags: &mut Tags<'_>, closed: bool) -> Option<()> {
    if closed {
        return Some(());
    }
    (tags.next()? == Tag::End).then_some(())
}
