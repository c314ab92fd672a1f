//! Request path, step 10 (see `ARCHITECTURE.md`).
//!
//! XML → JSON translation of Concur's answers.
//!
//! This is step 7 of the request path: the gateway **returns Concur's XML
//! answer translated to JSON**. The module is pure (no I/O, no clock, no
//! global state, no other gateway module), byte-capped and depth-capped, and
//! works in one streaming pass over the body with `quick_xml::NsReader`,
//! building the tree with an explicit stack of frames (no recursion, so a
//! hostile nesting cannot overflow the thread's stack).
//!
//! # Mapping (the "XML to JSON" contract)
//!
//! 1. The root element becomes the single top-level key.
//! 2. Namespace declarations (`xmlns`, `xmlns:*`) are dropped, and so are
//!    prefixes: only local names are used, for elements and attributes.
//! 3. An element holding only text becomes a JSON string. Predefined entities
//!    (`&amp;` …) and numeric character references (`&#65;`, `&#x41;`) are
//!    decoded; CDATA counts as text; line ends are normalised as every XML
//!    parser must (`\r\n` and lone `\r` become `\n`). Values are never
//!    guessed into numbers, booleans or `null`: `"007"`, `"true"` and IDs stay
//!    strings. The text of a text-only element is kept **exactly**, leading
//!    and trailing whitespace included — nothing is trimmed.
//! 4. An element is `null` when it is empty (`<a/>`, `<a></a>`) or when it
//!    carries `xsi:nil="true"` (or `"1"`, the other XML Schema spelling of
//!    true), where "xsi" is whatever prefix is bound to
//!    `http://www.w3.org/2001/XMLSchema-instance` (Concur uses `i:`). A nil
//!    element is `null` whatever its other attributes or content. The XSI
//!    `nil` attribute is never emitted as `@nil`, whatever its value; a `nil`
//!    attribute in any other namespace (or in none) is an ordinary attribute.
//!    **Choice:** an element without child elements whose whole (decoded)
//!    text is XML whitespace (space, tab, CR, LF — whether written literally,
//!    as character references or in CDATA) counts as empty: `<a> </a>` is
//!    `null`.
//! 5. An element with child elements becomes an object. Repeated sibling names
//!    become an array in document order; the key sits where its first
//!    occurrence put it: `<a><x>1</x><y>2</y><x>3</x></a>` →
//!    `{"a":{"x":["1","3"],"y":"2"}}`. (Element values are never arrays
//!    themselves, so an array always means "repeated".)
//! 6. Other attributes become `@`-prefixed keys (local name), placed before
//!    the child elements, values decoded and normalised as XML requires (tab,
//!    CR and LF become spaces). Two attributes sharing a local name in
//!    different namespaces (`a:id`, `b:id`) are merged like repeated siblings,
//!    into an array. Text beside attributes or child elements goes under
//!    `#text`, which comes last. An element with attributes but no text and
//!    no children is an object with just its `@` keys.
//!    **Choice (mixed content):** the text between child elements is cut into
//!    runs at child element boundaries (comments and processing instructions
//!    do not cut a run, they simply vanish); runs made only of whitespace
//!    (indentation) are dropped, and the remaining runs are concatenated
//!    verbatim, with no separator and no trimming:
//!    `<p>Hello <b>big</b> world</p>` → `{"p":{"b":"big","#text":"Hello  world"}}`.
//! 7. Refused: a DOCTYPE (hence any entity declaration, the billion-laughs
//!    shape included) or a stray DTD declaration (`<!ENTITY …>` and friends)
//!    → [`TransformError::Doctype`]; more than [`MAX_XML_BYTES`] →
//!    [`TransformError::TooLarge`], checked before any parsing; more than
//!    [`MAX_DEPTH`] nested elements → [`TransformError::TooDeep`]. Comments and
//!    processing instructions are skipped; the XML declaration is accepted
//!    as the first markup (leading whitespace tolerated), and a declared
//!    `version="1.1"` switches line-end and attribute normalisation to 1.1
//!    rules. Everything else that is not well-formed is
//!    [`TransformError::Malformed`]: mismatched or unclosed tags, an empty
//!    document, text or a second element after the root, text before it,
//!    invalid UTF-8, an unknown entity or bad character reference, a duplicate
//!    attribute, an undeclared namespace prefix, a misplaced or invalid XML
//!    declaration, or a declared encoding other than UTF-8 (`utf-8`, `utf8`,
//!    `us-ascii`, `ascii`, any case): the body is always read as UTF-8, and a
//!    UTF-8 byte-order mark is accepted.
//!
//! Not checked (quick-xml accepts them and so does this module; none is
//! dangerous in JSON): name syntax, `<` inside attribute values, `]]>` in
//! text, and character references to control characters such as `&#1;`.
//!
//! Error messages are short fixed phrases plus a byte offset: they never quote
//! the input, so they are safe to log and to return to a client.
//!
//! # Cost
//!
//! Everything is borrowed from the input until a JSON key or string is made:
//! a name is copied only when it is inserted into its parent, and text that
//! arrives in one piece (the usual case) is copied once, into its value.
//! Per call there is one small frame stack besides what quick-xml and the
//! JSON tree themselves need.
//!
//! # Examples
//!
//! ```
//! use concur_gateway::transform::{error_message, xml_to_json};
//!
//! let body = br#"<?xml version="1.0" encoding="utf-8"?>
//! <Image xmlns="http://www.concursolutions.com/api/image/2011/02" xmlns:i="http://www.w3.org/2001/XMLSchema-instance"><Id>A2C40CEE415B43B2A0BE</Id><Url i:nil="true" /></Image>"#;
//! let json = xml_to_json(body).unwrap();
//! assert_eq!(json.to_string(), r#"{"Image":{"Id":"A2C40CEE415B43B2A0BE","Url":null}}"#);
//!
//! let error_body = xml_to_json(b"<Error><Message>Image already exists</Message></Error>").unwrap();
//! assert_eq!(error_message(&error_body), Some("Image already exists"));
//! ```

use std::borrow::Cow;

use quick_xml::NsReader;
use quick_xml::XmlVersion;
use quick_xml::errors::{Error as XmlError, IllFormedError, SyntaxError};
use quick_xml::escape::{EscapeError, resolve_xml_entity};
use quick_xml::events::attributes::{Attribute, Attributes};
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{Namespace, NamespaceError, ResolveResult};
use serde_json::map::Entry;
use serde_json::{Map, Value};

/// Largest XML body translated, in bytes (1 MiB); anything longer is refused
/// before parsing starts.
pub const MAX_XML_BYTES: usize = 1024 * 1024;

/// Deepest element nesting translated: 64 nested elements (the root counts
/// as one) are fine, 65 are refused.
pub const MAX_DEPTH: usize = 64;

/// The XML Schema instance namespace, home of the `nil` attribute.
const XSI_NAMESPACE: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// Key holding the text of an element that also has attributes or children.
const TEXT_KEY: &str = "#text";

/// Why an XML body could not be translated.
///
/// Messages are short and never quote the input.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    /// The body is longer than [`MAX_XML_BYTES`].
    #[error("XML body larger than {} bytes", MAX_XML_BYTES)]
    TooLarge,
    /// Elements are nested deeper than [`MAX_DEPTH`].
    #[error("XML nested deeper than {} elements", MAX_DEPTH)]
    TooDeep,
    /// The body holds a DOCTYPE or a DTD declaration (`<!ENTITY …>`, …).
    #[error("XML DOCTYPE or entity declarations are not accepted")]
    Doctype,
    /// The body is not well-formed (namespace-aware) XML; the text says why
    /// and roughly where (a byte offset), without quoting the input.
    #[error("malformed XML: {0}")]
    Malformed(String),
}

/// Translates one XML body to JSON according to the module's contract.
///
/// One streaming pass with quick-xml (`NsReader` over the byte slice), size-
/// and depth-capped: the size check comes first, before any parsing.
pub fn xml_to_json(xml: &[u8]) -> Result<Value, TransformError> {
    if xml.len() > MAX_XML_BYTES {
        return Err(TransformError::TooLarge);
    }
    let mut reader = NsReader::from_reader(xml);
    // Element frames from the root down to the innermost open element; never
    // longer than MAX_DEPTH. Concur's answers are 2–4 deep.
    let mut stack: Vec<Frame<'_>> = Vec::with_capacity(4);
    let mut root: Option<Value> = None;
    let mut version = XmlVersion::Implicit1_0;
    // Whether any markup (comment, PI, declaration) came before: the XML
    // declaration must come first.
    let mut markup_seen = false;

    loop {
        let event = match reader.read_event() {
            Ok(event) => event,
            Err(err) => return Err(reader_error(&reader, xml, err)),
        };
        match event {
            Event::Start(start) => {
                check_open(&reader, &stack, root.is_some(), &start)?;
                let (fields, nil) = read_attributes(&reader, &start, version)?;
                if let Some(parent) = stack.last_mut() {
                    parent.close_run();
                }
                stack.push(Frame {
                    start,
                    fields,
                    text: Cow::Borrowed(""),
                    run_start: 0,
                    nil,
                });
            }
            Event::Empty(start) => {
                check_open(&reader, &stack, root.is_some(), &start)?;
                let (fields, nil) = read_attributes(&reader, &start, version)?;
                let value = match fields {
                    Some(fields) if !nil => Value::Object(fields),
                    _ => Value::Null,
                };
                match stack.last_mut() {
                    Some(parent) => {
                        parent.close_run();
                        parent.add_child(start.local_name().into_inner(), value);
                    }
                    None => root = Some(root_object(&start, value)),
                }
            }
            Event::End(_) => {
                // quick-xml has already matched the end tag against the open
                // start tag (`check_end_names` is on by default).
                let Some(frame) = stack.pop() else {
                    return Err(malformed("end tag without start tag", &reader));
                };
                let (start, value) = frame.finish();
                match stack.last_mut() {
                    Some(parent) => parent.add_child(start.local_name().into_inner(), value),
                    None => root = Some(root_object(&start, value)),
                }
            }
            Event::Text(text) => {
                let text = text.xml_content(version);
                match stack.last_mut() {
                    Some(frame) => frame.push_text(text),
                    None if is_xml_whitespace(&text) => {}
                    None => return Err(malformed("text outside the root element", &reader)),
                }
            }
            Event::CData(cdata) => match stack.last_mut() {
                Some(frame) => frame.push_text(cdata.xml_content(version)),
                None => return Err(malformed("CDATA outside the root element", &reader)),
            },
            Event::GeneralRef(reference) => {
                let Some(frame) = stack.last_mut() else {
                    return Err(malformed("reference outside the root element", &reader));
                };
                match reference.resolve_char_ref() {
                    Ok(Some(ch)) => frame.push_char(ch),
                    Ok(None) => match resolve_xml_entity(&reference) {
                        Some(replacement) => frame.push_text(Cow::Borrowed(replacement)),
                        None => return Err(malformed("unknown entity", &reader)),
                    },
                    Err(_) => return Err(malformed("invalid character reference", &reader)),
                }
            }
            Event::Decl(decl) => {
                if markup_seen || root.is_some() || !stack.is_empty() {
                    return Err(malformed("misplaced XML declaration", &reader));
                }
                markup_seen = true;
                version = read_declaration(&decl).map_err(|what| malformed(what, &reader))?;
            }
            Event::PI(_) | Event::Comment(_) => markup_seen = true,
            Event::DocType(_) => return Err(TransformError::Doctype),
            Event::Eof => break,
        }
    }

    if !stack.is_empty() {
        return Err(malformed("unclosed element at end of input", &reader));
    }
    root.ok_or_else(|| malformed("no root element", &reader))
}

/// For Concur error bodies: the text of `<Error><Message>`, if the translated
/// JSON has root `Error` with a `Message` child holding text.
///
/// A `Message` that also carried attributes yields its `#text`; a nil, empty,
/// repeated or structured `Message` yields `None`.
pub fn error_message(json: &serde_json::Value) -> Option<&str> {
    match json.get("Error")?.get("Message")? {
        Value::String(text) => Some(text),
        Value::Object(fields) => fields.get(TEXT_KEY)?.as_str(),
        _ => None,
    }
}

/// One open element.
struct Frame<'a> {
    /// The start tag, borrowed from the input; its local name becomes a key
    /// (and is only copied then).
    start: BytesStart<'a>,
    /// `@` attributes and child elements, created on first need.
    fields: Option<Map<String, Value>>,
    /// Text collected so far: the kept runs, then the current run. Borrowed
    /// from the input while it is a single piece.
    text: Cow<'a, str>,
    /// Where the current text run starts in `text`.
    run_start: usize,
    /// `xsi:nil` was true: the element is `null` whatever it holds.
    nil: bool,
}

impl<'a> Frame<'a> {
    /// Appends a piece of the current text run.
    fn push_text(&mut self, piece: Cow<'a, str>) {
        if piece.is_empty() {
            return;
        }
        if self.text.is_empty() {
            self.text = piece;
        } else {
            self.text.to_mut().push_str(&piece);
        }
    }

    /// Appends a character (a decoded character reference) to the current run.
    fn push_char(&mut self, ch: char) {
        self.text.to_mut().push(ch);
    }

    /// Ends the current text run: dropped if it is only whitespace.
    fn close_run(&mut self) {
        if is_xml_whitespace(&self.text[self.run_start..]) {
            match &mut self.text {
                Cow::Borrowed(text) => *text = &text[..self.run_start],
                Cow::Owned(text) => text.truncate(self.run_start),
            }
        }
        self.run_start = self.text.len();
    }

    /// Adds a closed child element under its local name, turning a repeated
    /// name into an array.
    fn add_child(&mut self, name: &str, value: Value) {
        if self.nil {
            return; // the whole element will be null anyway
        }
        match &mut self.fields {
            // First field: nothing to look up.
            None => {
                let mut fields = Map::new();
                fields.insert(name.to_owned(), value);
                self.fields = Some(fields);
            }
            // Look up by the borrowed name; copy it only for a new key.
            Some(fields) => match fields.get_mut(name) {
                Some(existing) => append_repeated(existing, value),
                None => {
                    fields.insert(name.to_owned(), value);
                }
            },
        }
    }

    /// Closes the element: its start tag and its JSON value.
    fn finish(mut self) -> (BytesStart<'a>, Value) {
        if self.nil {
            return (self.start, Value::Null);
        }
        self.close_run();
        let value = match self.fields {
            None if self.text.is_empty() => Value::Null,
            None => Value::String(self.text.into_owned()),
            Some(mut fields) => {
                if !self.text.is_empty() {
                    fields.insert(TEXT_KEY.to_owned(), Value::String(self.text.into_owned()));
                }
                Value::Object(fields)
            }
        };
        (self.start, value)
    }
}

/// Turns `slot` into an array of its values (if it is not one yet) and
/// appends `value`.
fn append_repeated(slot: &mut Value, value: Value) {
    match slot {
        Value::Array(items) => items.push(value),
        single => {
            let first = single.take();
            *single = Value::Array(vec![first, value]);
        }
    }
}

/// `{"<root local name>": value}`.
fn root_object(start: &BytesStart<'_>, value: Value) -> Value {
    let mut object = Map::with_capacity(1);
    object.insert(start.local_name().into_inner().to_owned(), value);
    Value::Object(object)
}

/// Checks that an element may open here: not a second root, not too deep,
/// and its prefix (if any) is declared.
fn check_open(
    reader: &NsReader<&[u8]>,
    stack: &[Frame<'_>],
    root_done: bool,
    start: &BytesStart<'_>,
) -> Result<(), TransformError> {
    if root_done {
        return Err(malformed("element after the root element", reader));
    }
    if stack.len() >= MAX_DEPTH {
        return Err(TransformError::TooDeep);
    }
    let name = start.name();
    if name.prefix().is_some()
        && matches!(
            reader.resolver().resolve_element(name).0,
            ResolveResult::Unknown(_)
        )
    {
        return Err(malformed("undeclared namespace prefix", reader));
    }
    Ok(())
}

/// Reads a start tag's attributes: the `@` fields (if any) and whether the
/// element is `xsi:nil`. Namespace declarations are skipped.
fn read_attributes(
    reader: &NsReader<&[u8]>,
    start: &BytesStart<'_>,
    version: XmlVersion,
) -> Result<(Option<Map<String, Value>>, bool), TransformError> {
    let mut fields: Option<Map<String, Value>> = None;
    let mut nil = false;
    for attribute in start.attributes() {
        let attribute =
            attribute.map_err(|_| malformed("malformed or duplicate attribute", reader))?;
        if attribute.key.as_namespace_binding().is_some() {
            continue;
        }
        let (namespace, local) = reader.resolver().resolve_attribute(attribute.key);
        let local = local.into_inner();
        match namespace {
            ResolveResult::Bound(Namespace(XSI_NAMESPACE)) if local == "nil" => {
                let value = attribute_value(&attribute, version, reader)?;
                nil = matches!(value.trim_matches(is_xml_whitespace_char), "true" | "1");
                continue;
            }
            ResolveResult::Unknown(_) => {
                return Err(malformed("undeclared namespace prefix", reader));
            }
            ResolveResult::Bound(_) | ResolveResult::Unbound => {}
        }
        let value = attribute_value(&attribute, version, reader)?;
        let mut key = String::with_capacity(1 + local.len());
        key.push('@');
        key.push_str(local);
        let value = Value::String(value.into_owned());
        match fields.get_or_insert_with(Map::new).entry(key) {
            Entry::Vacant(slot) => {
                slot.insert(value);
            }
            Entry::Occupied(mut slot) => append_repeated(slot.get_mut(), value),
        }
    }
    Ok((fields, nil))
}

/// An attribute's value, entities decoded and whitespace normalised.
fn attribute_value<'a>(
    attribute: &Attribute<'a>,
    version: XmlVersion,
    reader: &NsReader<&[u8]>,
) -> Result<Cow<'a, str>, TransformError> {
    attribute
        .normalized_value(version)
        .map_err(|err| malformed(xml_error_phrase(&err), reader))
}

/// Maps a reader error to a [`TransformError`], recognising the DTD cases.
fn reader_error(reader: &NsReader<&[u8]>, xml: &[u8], err: XmlError) -> TransformError {
    match &err {
        XmlError::Syntax(SyntaxError::UnclosedDoctype)
        | XmlError::IllFormed(IllFormedError::MissingDoctypeName) => TransformError::Doctype,
        XmlError::Syntax(SyntaxError::InvalidBangMarkup) if is_dtd_declaration(reader, xml) => {
            TransformError::Doctype
        }
        _ => malformed(xml_error_phrase(&err), reader),
    }
}

/// Whether the `<!…>` markup the reader choked on is a DTD declaration
/// (`<!ENTITY`, `<!ELEMENT`, `<!ATTLIST`, `<!NOTATION`) outside a DOCTYPE.
fn is_dtd_declaration(reader: &NsReader<&[u8]>, xml: &[u8]) -> bool {
    // The reader counts offsets after the byte-order mark it skipped.
    let bom = if xml.starts_with(b"\xEF\xBB\xBF") {
        3
    } else {
        0
    };
    let Ok(at) = usize::try_from(reader.error_position()) else {
        return false;
    };
    let Some(rest) = xml.get(bom + at..) else {
        return false;
    };
    [&b"<!ENTITY"[..], b"<!ELEMENT", b"<!ATTLIST", b"<!NOTATION"]
        .iter()
        .any(|keyword| rest.starts_with(keyword))
}

/// A short, input-free description of a quick-xml error.
fn xml_error_phrase(err: &XmlError) -> &'static str {
    match err {
        XmlError::Syntax(SyntaxError::UnclosedTag) => "unclosed tag",
        XmlError::Syntax(SyntaxError::InvalidBangMarkup) => "unknown <! markup",
        XmlError::Syntax(
            SyntaxError::UnclosedSingleQuotedAttributeValue
            | SyntaxError::UnclosedDoubleQuotedAttributeValue,
        ) => "unclosed attribute value",
        XmlError::Syntax(_) => "unclosed comment, CDATA or processing instruction",
        XmlError::IllFormed(IllFormedError::MismatchedEndTag { .. }) => "mismatched end tag",
        XmlError::IllFormed(IllFormedError::UnmatchedEndTag(_)) => "end tag without start tag",
        XmlError::IllFormed(IllFormedError::MissingEndTag(_)) => "unclosed element",
        XmlError::IllFormed(IllFormedError::UnclosedReference) => "unterminated reference",
        XmlError::IllFormed(_) => "ill-formed markup",
        XmlError::InvalidAttr(_) => "malformed or duplicate attribute",
        XmlError::Encoding(_) => "invalid UTF-8",
        XmlError::Escape(EscapeError::UnrecognizedEntity(..)) => "unknown entity",
        XmlError::Escape(EscapeError::UnterminatedEntity(_)) => "unterminated reference",
        XmlError::Escape(_) => "invalid character reference",
        XmlError::Namespace(NamespaceError::UnknownPrefix(_)) => "undeclared namespace prefix",
        XmlError::Namespace(_) => "invalid namespace declaration",
        XmlError::Io(_) => "read error",
    }
}

/// `Malformed("<what> near byte <offset>")`.
fn malformed(what: &str, reader: &NsReader<&[u8]>) -> TransformError {
    TransformError::Malformed(format!("{what} near byte {}", reader.buffer_position()))
}

/// Reads the XML declaration (`decl` is its text after `<?`, e.g.
/// `xml version="1.0" encoding="utf-8"`) in one pass: the version, which must
/// come first, and a check that the declared encoding, if any, is UTF-8.
fn read_declaration(decl: &str) -> Result<XmlVersion, &'static str> {
    const BAD: &str = "bad XML declaration";
    let mut attributes = Attributes::new(decl, "xml".len());
    attributes.with_checks(false);
    let mut version = None;
    for (index, attribute) in attributes.enumerate() {
        let attribute = attribute.map_err(|_| BAD)?;
        match (index, attribute.key.into_inner()) {
            (0, "version") => {
                version = Some(match &*attribute.value {
                    "1.0" => XmlVersion::Explicit1_0,
                    "1.1" => XmlVersion::Explicit1_1,
                    _ => return Err(BAD),
                });
            }
            (_, "encoding") if !is_utf8_label(&attribute.value) => {
                return Err("unsupported encoding (UTF-8 only)");
            }
            _ => {}
        }
    }
    version.ok_or(BAD)
}

/// The encoding labels that mean UTF-8 (US-ASCII is a subset).
fn is_utf8_label(label: &str) -> bool {
    ["utf-8", "utf8", "us-ascii", "ascii"]
        .iter()
        .any(|known| label.eq_ignore_ascii_case(known))
}

fn is_xml_whitespace_char(ch: char) -> bool {
    matches!(ch, ' ' | '\t' | '\r' | '\n')
}

/// Whether `text` is empty or only XML whitespace (space, tab, CR, LF).
fn is_xml_whitespace(text: &str) -> bool {
    text.bytes()
        .all(|byte| matches!(byte, b' ' | b'\t' | b'\r' | b'\n'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_IMAGE: &str = concat!(
        r#"<?xml version="1.0" encoding="utf-8"?>"#,
        "\n",
        r#"<Image xmlns="http://www.concursolutions.com/api/image/2011/02" "#,
        r#"xmlns:i="http://www.w3.org/2001/XMLSchema-instance">"#,
        r#"<Id>A2C40CEE415B43B2A0BE</Id><Url i:nil="true" /></Image>"#,
    );

    /// Translates and serialises (key order matters, so compare text).
    fn json(xml: &str) -> String {
        match xml_to_json(xml.as_bytes()) {
            Ok(value) => value.to_string(),
            Err(err) => panic!("{xml:?} failed: {err}"),
        }
    }

    fn err(xml: impl AsRef<[u8]>) -> TransformError {
        match xml_to_json(xml.as_ref()) {
            Ok(value) => panic!("expected an error, got {value}"),
            Err(err) => err,
        }
    }

    fn assert_malformed(xml: impl AsRef<[u8]>, phrase: &str) {
        match err(xml) {
            TransformError::Malformed(message) => assert!(
                message.contains(phrase),
                "message {message:?} lacks {phrase:?}"
            ),
            other => panic!("expected Malformed({phrase}), got {other:?}"),
        }
    }

    fn nested(depth: usize, innermost: &str) -> String {
        let mut xml = "<a>".repeat(depth);
        xml.push_str(innermost);
        xml.push_str(&"</a>".repeat(depth));
        xml
    }

    // --- the seed examples -------------------------------------------------

    #[test]
    fn seed_image() {
        assert_eq!(
            json(SEED_IMAGE),
            r#"{"Image":{"Id":"A2C40CEE415B43B2A0BE","Url":null}}"#
        );
    }

    #[test]
    fn seed_error_body_and_its_message() {
        let xml = "<Error><Message>Image already exists</Message>\
                   <Server-Time>2026-01-01T00:00:00</Server-Time><Id>ABC</Id></Error>";
        assert_eq!(
            json(xml),
            r#"{"Error":{"Message":"Image already exists","Server-Time":"2026-01-01T00:00:00","Id":"ABC"}}"#
        );
        let value = xml_to_json(xml.as_bytes()).unwrap();
        assert_eq!(error_message(&value), Some("Image already exists"));
    }

    #[test]
    fn error_message_only_for_error_message_text() {
        let message =
            |xml: &str| error_message(&xml_to_json(xml.as_bytes()).unwrap()).map(str::to_owned);
        assert_eq!(message("<Image><Message>x</Message></Image>"), None);
        assert_eq!(message("<Error><Id>1</Id></Error>"), None);
        assert_eq!(message("<Error/>"), None);
        assert_eq!(message("<Error>just text</Error>"), None);
        assert_eq!(message("<Error><Message/></Error>"), None);
        assert_eq!(
            message("<Error><Message>a</Message><Message>b</Message></Error>"),
            None
        );
        assert_eq!(
            message(r#"<e:Error xmlns:e="urn:e"><e:Message>ns</e:Message></e:Error>"#),
            Some("ns".to_owned())
        );
        assert_eq!(
            message(r#"<Error><Message code="7">with attr</Message></Error>"#),
            Some("with attr".to_owned())
        );
    }

    // --- repeated siblings ---------------------------------------------------

    #[test]
    fn repeated_siblings_interleaved_keep_first_position() {
        assert_eq!(
            json("<a><x>1</x><y>2</y><x>3</x></a>"),
            r#"{"a":{"x":["1","3"],"y":"2"}}"#
        );
    }

    #[test]
    fn three_repeats_and_interleaving() {
        assert_eq!(
            json("<a><x>1</x><x>2</x><x>3</x></a>"),
            r#"{"a":{"x":["1","2","3"]}}"#
        );
        assert_eq!(
            json("<a><y>0</y><x>1</x><y>2</y><x>3</x><z/><x>5</x></a>"),
            r#"{"a":{"y":["0","2"],"x":["1","3","5"],"z":null}}"#
        );
    }

    #[test]
    fn repeated_siblings_of_different_shapes() {
        assert_eq!(
            json(r#"<a><x/><x>t</x><x k="v"/><x><y>1</y></x></a>"#),
            r#"{"a":{"x":[null,"t",{"@k":"v"},{"y":"1"}]}}"#
        );
    }

    #[test]
    fn repeated_siblings_in_pretty_printed_list() {
        let xml = "<Images>\n  <Image><Id>1</Id></Image>\n  <Image><Id>2</Id></Image>\n</Images>\n";
        assert_eq!(json(xml), r#"{"Images":{"Image":[{"Id":"1"},{"Id":"2"}]}}"#);
    }

    // --- attributes and namespaces -----------------------------------------

    #[test]
    fn attributes_become_at_keys_with_prefix_dropped() {
        assert_eq!(
            json(r#"<a xmlns:p="urn:p" p:id="7" name="n"><b>1</b></a>"#),
            r#"{"a":{"@id":"7","@name":"n","b":"1"}}"#
        );
        // Attribute and child of the same name stay apart.
        assert_eq!(
            json(r#"<a id="1"><id>2</id></a>"#),
            r#"{"a":{"@id":"1","id":"2"}}"#
        );
    }

    #[test]
    fn attributes_only_element_is_object_of_at_keys() {
        assert_eq!(json(r#"<a x="1" y=''/>"#), r#"{"a":{"@x":"1","@y":""}}"#);
        assert_eq!(json(r#"<a x="1"></a>"#), r#"{"a":{"@x":"1"}}"#);
        assert_eq!(json("<a x=\"1\">\n  </a>"), r#"{"a":{"@x":"1"}}"#);
    }

    #[test]
    fn attribute_values_are_decoded_and_normalised() {
        assert_eq!(
            json("<a v=\"x &amp; &#x41;&#65; &lt;&quot;&apos;\" w=\"a\tb\nc\"/>"),
            r#"{"a":{"@v":"x & AA <\"'","@w":"a b c"}}"#
        );
        assert_eq!(
            json(r#"<a v="007" b="true"/>"#),
            r#"{"a":{"@v":"007","@b":"true"}}"#
        );
    }

    #[test]
    fn attributes_sharing_a_local_name_merge_into_an_array() {
        assert_eq!(
            json(r#"<a xmlns:p="urn:p" xmlns:q="urn:q" p:id="1" q:id="2"/>"#),
            r#"{"a":{"@id":["1","2"]}}"#
        );
    }

    #[test]
    fn namespace_declarations_and_prefixes_are_dropped() {
        assert_eq!(
            json(concat!(
                r#"<p:a xmlns:p="urn:p" xmlns="urn:d">"#,
                r#"<p:b>1</p:b><c xmlns="urn:e" xmlns:q="urn:q">2</c><q:d xmlns:q="urn:q"/>"#,
                r#"</p:a>"#
            )),
            r#"{"a":{"b":"1","c":"2","d":null}}"#
        );
        // Only namespace declarations: still an empty element.
        assert_eq!(
            json(r#"<a xmlns="urn:x" xmlns:y="urn:y"/>"#),
            r#"{"a":null}"#
        );
        // xml: is predefined.
        assert_eq!(
            json(r#"<a xml:lang="fr">oui</a>"#),
            r##"{"a":{"@lang":"fr","#text":"oui"}}"##
        );
    }

    // --- nil -----------------------------------------------------------------

    #[test]
    fn nil_with_prefix_i() {
        assert_eq!(
            json(r#"<r xmlns:i="http://www.w3.org/2001/XMLSchema-instance"><u i:nil="true"/></r>"#),
            r#"{"r":{"u":null}}"#
        );
    }

    #[test]
    fn nil_with_prefix_xsi_declared_on_the_element_itself() {
        assert_eq!(
            json(
                r#"<r><u xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:nil="true"></u></r>"#
            ),
            r#"{"r":{"u":null}}"#
        );
        assert_eq!(
            json(r#"<u xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:nil=" 1 "/>"#),
            r#"{"u":null}"#
        );
    }

    #[test]
    fn nil_with_other_attributes_or_content_is_still_null() {
        let xsi = r#"xmlns:i="http://www.w3.org/2001/XMLSchema-instance""#;
        assert_eq!(
            json(&format!(r#"<u {xsi} a="1" i:nil="true" b="2"/>"#)),
            r#"{"u":null}"#
        );
        assert_eq!(
            json(&format!(
                r#"<r {xsi}><u i:nil="true" a="1">text<c>x</c></u><v>1</v></r>"#
            )),
            r#"{"r":{"u":null,"v":"1"}}"#
        );
    }

    #[test]
    fn nil_false_is_not_null_and_never_emitted() {
        let xsi = r#"xmlns:i="http://www.w3.org/2001/XMLSchema-instance""#;
        assert_eq!(
            json(&format!(r#"<u {xsi} i:nil="false">x</u>"#)),
            r#"{"u":"x"}"#
        );
        assert_eq!(
            json(&format!(r#"<u {xsi} i:nil="false" a="1"/>"#)),
            r#"{"u":{"@a":"1"}}"#
        );
        assert_eq!(
            json(&format!(r#"<u {xsi} i:type="t">x</u>"#)),
            r##"{"u":{"@type":"t","#text":"x"}}"##
        );
    }

    #[test]
    fn nil_outside_the_xsi_namespace_is_a_plain_attribute() {
        // Unprefixed: attributes are in no namespace, even under a default one.
        assert_eq!(json(r#"<u nil="true"/>"#), r#"{"u":{"@nil":"true"}}"#);
        assert_eq!(
            json(r#"<u xmlns="http://www.w3.org/2001/XMLSchema-instance" nil="true"/>"#),
            r#"{"u":{"@nil":"true"}}"#
        );
        // Prefix bound elsewhere.
        assert_eq!(
            json(r#"<u xmlns:i="urn:not-xsi" i:nil="true">x</u>"#),
            r##"{"u":{"@nil":"true","#text":"x"}}"##
        );
    }

    #[test]
    fn nil_with_undeclared_prefix_is_malformed() {
        assert_malformed(r#"<u i:nil="true"/>"#, "undeclared namespace prefix");
    }

    // --- empty elements and text ---------------------------------------------

    #[test]
    fn empty_elements_are_null() {
        assert_eq!(json("<a/>"), r#"{"a":null}"#);
        assert_eq!(json("<a></a>"), r#"{"a":null}"#);
        assert_eq!(
            json("<r><a/><b></b><c> \t\r\n </c></r>"),
            r#"{"r":{"a":null,"b":null,"c":null}}"#
        );
        // Whitespace is whitespace however it is written.
        assert_eq!(json("<a>&#32;<![CDATA[ ]]>&#x9;</a>"), r#"{"a":null}"#);
    }

    #[test]
    fn numbers_and_booleans_stay_strings() {
        assert_eq!(
            json("<r><n>007</n><b>true</b><f>false</f><e>1.5e3</e><z>null</z><m>-1</m></r>"),
            r#"{"r":{"n":"007","b":"true","f":"false","e":"1.5e3","z":"null","m":"-1"}}"#
        );
    }

    #[test]
    fn entities_and_character_references_are_decoded() {
        assert_eq!(
            json("<a>&amp;&lt;&gt;&quot;&apos;|&#x41;&#65;&#x1F600;</a>"),
            r#"{"a":"&<>\"'|AA😀"}"#
        );
        assert_eq!(json("<a>Fish &amp; Chips</a>"), r#"{"a":"Fish & Chips"}"#);
    }

    #[test]
    fn text_is_kept_exactly_with_line_ends_normalised() {
        assert_eq!(
            json("<a>  two  spaces \n</a>"),
            r#"{"a":"  two  spaces \n"}"#
        );
        assert_eq!(json("<a>x\r\ny\rz</a>"), r#"{"a":"x\ny\nz"}"#);
        assert_eq!(
            json("<a>caf\u{e9} \u{65e5}\u{672c}</a>"),
            "{\"a\":\"caf\u{e9} \u{65e5}\u{672c}\"}"
        );
    }

    #[test]
    fn cdata_counts_as_text() {
        assert_eq!(
            json("<a><![CDATA[<not> & markup]]></a>"),
            r#"{"a":"<not> & markup"}"#
        );
        assert_eq!(json("<a>x<![CDATA[y]]>z&amp;</a>"), r#"{"a":"xyz&"}"#);
    }

    #[test]
    fn mixed_content_goes_under_text_key() {
        assert_eq!(
            json("<p>Hello <b>big</b> world</p>"),
            r##"{"p":{"b":"big","#text":"Hello  world"}}"##
        );
        // Whitespace-only runs (indentation) are dropped, others kept verbatim.
        assert_eq!(
            json("<p>\n  <b>1</b>\n  tail\n</p>"),
            r##"{"p":{"b":"1","#text":"\n  tail\n"}}"##
        );
        assert_eq!(
            json(r#"<a id="1">text</a>"#),
            r##"{"a":{"@id":"1","#text":"text"}}"##
        );
        assert_eq!(
            json(r#"<a id="1">x<b/>y<c/>z</a>"#),
            r##"{"a":{"@id":"1","b":null,"c":null,"#text":"xyz"}}"##
        );
    }

    #[test]
    fn comments_and_processing_instructions_are_skipped() {
        assert_eq!(
            json(
                "<?xml version=\"1.0\"?>\n<!-- c --><?pi x?>\n<a><!-- in -->x<?pi?>y<b/><!--z--></a>\n<!-- after --><?pi?>\n"
            ),
            r##"{"a":{"b":null,"#text":"xy"}}"##
        );
        assert_eq!(json("<a><!-- only a comment --></a>"), r#"{"a":null}"#);
    }

    #[test]
    fn byte_order_mark_and_encoding_declaration() {
        let mut with_bom = b"\xEF\xBB\xBF".to_vec();
        with_bom.extend_from_slice(SEED_IMAGE.as_bytes());
        assert_eq!(
            xml_to_json(&with_bom).unwrap().to_string(),
            r#"{"Image":{"Id":"A2C40CEE415B43B2A0BE","Url":null}}"#
        );
        assert_eq!(
            json(r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><a/>"#),
            r#"{"a":null}"#
        );
        assert_eq!(
            json("<?xml version='1.1' encoding='us-ascii'?><a>x</a>"),
            r#"{"a":"x"}"#
        );
        assert_malformed(
            r#"<?xml version="1.0" encoding="ISO-8859-1"?><a/>"#,
            "encoding",
        );
        assert_malformed(r#"<?xml version="1.0" encoding="UTF-16"?><a/>"#, "encoding");
    }

    // --- limits ----------------------------------------------------------------

    #[test]
    fn depth_64_is_fine() {
        let value = xml_to_json(nested(MAX_DEPTH, "x").as_bytes()).unwrap();
        let mut cursor = &value;
        for _ in 0..MAX_DEPTH {
            cursor = &cursor["a"];
        }
        assert_eq!(cursor, "x");
        assert!(xml_to_json(nested(MAX_DEPTH - 1, "<a/>").as_bytes()).is_ok());
    }

    #[test]
    fn depth_65_is_too_deep() {
        assert!(matches!(
            err(nested(MAX_DEPTH + 1, "x")),
            TransformError::TooDeep
        ));
        assert!(matches!(
            err(nested(MAX_DEPTH, "<a/>")),
            TransformError::TooDeep
        ));
        // Far deeper, and unclosed: refused early, without recursion.
        assert!(matches!(
            err("<a>".repeat(200_000)),
            TransformError::TooDeep
        ));
    }

    #[test]
    fn size_cap() {
        // Exactly 1 MiB is accepted...
        let mut xml = String::from("<a>");
        xml.push_str(&"x".repeat(MAX_XML_BYTES - "<a></a>".len()));
        xml.push_str("</a>");
        assert_eq!(xml.len(), MAX_XML_BYTES);
        assert!(xml_to_json(xml.as_bytes()).is_ok());
        // ...one byte more is refused, before parsing (this is not even XML).
        assert!(matches!(
            err(vec![b'<'; MAX_XML_BYTES + 1]),
            TransformError::TooLarge
        ));
        xml.push(' ');
        assert!(matches!(err(xml), TransformError::TooLarge));
    }

    // --- DTDs --------------------------------------------------------------------

    #[test]
    fn doctype_is_refused() {
        assert!(matches!(err("<!DOCTYPE a><a/>"), TransformError::Doctype));
        assert!(matches!(
            err("<?xml version=\"1.0\"?>\n<!doctype a SYSTEM \"file:///etc/passwd\"><a/>"),
            TransformError::Doctype
        ));
        assert!(matches!(err("<a/><!DOCTYPE a>"), TransformError::Doctype));
        assert!(matches!(
            err("<!DOCTYPE a [ <!ELEMENT a ANY>"),
            TransformError::Doctype
        ));
        assert!(matches!(err("<!DOCTYPE>"), TransformError::Doctype));
    }

    #[test]
    fn billion_laughs_is_refused() {
        let xml = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<lolz>&lol4;</lolz>"#;
        assert!(matches!(err(xml), TransformError::Doctype));
    }

    #[test]
    fn entity_declarations_are_refused() {
        assert!(matches!(
            err(r#"<!ENTITY x "y"><a>&x;</a>"#),
            TransformError::Doctype
        ));
        assert!(matches!(
            err(r#"<a><!ENTITY x SYSTEM "file:///etc/passwd"></a>"#),
            TransformError::Doctype
        ));
        assert!(matches!(
            err("\u{feff}<!ENTITY x 'y'><a/>"),
            TransformError::Doctype
        ));
        assert!(matches!(
            err(r#"<!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>"#),
            TransformError::Doctype
        ));
    }

    // --- malformed input -----------------------------------------------------------

    #[test]
    fn mismatched_tags() {
        assert_malformed("<a><b></a></b>", "mismatched end tag");
        assert_malformed("<a></b>", "mismatched end tag");
        assert_malformed("</a>", "end tag without start tag");
        assert_malformed("<p:a xmlns:p='urn:p'></q:a>", "mismatched end tag");
    }

    #[test]
    fn unclosed_root() {
        assert_malformed("<a>", "unclosed element");
        assert_malformed("<a><b>x</b>", "unclosed element");
        assert_malformed("<a><b", "unclosed tag");
        assert_malformed("<a x=\"1></a>", "unclosed");
        assert_malformed("<a><![CDATA[x</a>", "unclosed");
        assert_malformed("<a><!-- x</a>", "unclosed");
    }

    #[test]
    fn text_or_second_element_after_root() {
        assert_malformed("<a/>x", "text outside the root element");
        assert_malformed("<a/>&amp;", "reference outside the root element");
        assert_malformed("<a/><![CDATA[x]]>", "CDATA outside the root element");
        assert_malformed("<a/><b/>", "element after the root element");
        assert_malformed("<a></a><a></a>", "element after the root element");
        assert_malformed("x<a/>", "text outside the root element");
        // Whitespace around the root is fine.
        assert_eq!(json(" \n<a/>\n\t "), r#"{"a":null}"#);
    }

    #[test]
    fn empty_document() {
        assert_malformed("", "no root element");
        assert_malformed(" \n ", "no root element");
        assert_malformed("<?xml version=\"1.0\"?><!-- nothing -->", "no root element");
    }

    #[test]
    fn invalid_utf8() {
        assert_malformed(b"<a>\xFF\xFE</a>".as_slice(), "invalid UTF-8");
        assert_malformed(b"<a\xC3>x</a\xC3>".as_slice(), "invalid UTF-8");
        assert_malformed(b"<a v=\"\xE2\x82\"/>".as_slice(), "invalid UTF-8");
        assert_malformed(b"\xFF\xFE<\0a\0/\0>\0".as_slice(), "invalid UTF-8");
    }

    #[test]
    fn unknown_entity_and_bad_references() {
        assert_malformed("<a>&nbsp;</a>", "unknown entity");
        assert_malformed("<a v=\"&foo;\"/>", "unknown entity");
        assert_malformed("<a>AT&T</a>", "unterminated reference");
        assert_malformed("<a>&#0;</a>", "invalid character reference");
        assert_malformed("<a>&#xD800;</a>", "invalid character reference");
        assert_malformed("<a>&#xZZ;</a>", "invalid character reference");
    }

    #[test]
    fn other_malformations() {
        assert_malformed(r#"<a x="1" x="2"/>"#, "duplicate attribute");
        assert_malformed("<p:a/>", "undeclared namespace prefix");
        assert_malformed("<a><p:b/></a>", "undeclared namespace prefix");
        assert_malformed(
            "<a><p:b xmlns:p='urn:p'/><p:c/></a>",
            "undeclared namespace prefix",
        );
        assert_malformed(
            r#"<a xmlns:xml="urn:wrong"/>"#,
            "invalid namespace declaration",
        );
        assert_malformed(
            r#"<a><?xml version="1.0"?></a>"#,
            "misplaced XML declaration",
        );
        assert_malformed(
            r#"<!-- c --><?xml version="1.0"?><a/>"#,
            "misplaced XML declaration",
        );
        assert_malformed(r#"<?xml version="2.0"?><a/>"#, "bad XML declaration");
        assert_malformed(r#"<?xml encoding="utf-8"?><a/>"#, "bad XML declaration");
        assert_malformed(
            r#"<?xml encoding="utf-8" version="1.0"?><a/>"#,
            "bad XML declaration",
        );
        assert_malformed("<!FOO><a/>", "unknown <! markup");
    }

    #[test]
    fn error_messages_are_short_and_never_quote_the_input() {
        let long = "VeryLongElementNameThatMustNotBeEchoedBackToAnyClientOrLog";
        let cases = [
            format!("<{long}></{long}x>"),
            format!("</{long}>"),
            format!("<{long}>"),
            format!("<a>&{long};</a>"),
            format!("<a/>{long}"),
            format!("<{long}:a/>"),
        ];
        for xml in cases {
            let message = err(&xml).to_string();
            assert!(message.len() <= 80, "{message:?} too long");
            assert!(
                !message.contains("VeryLong"),
                "{message:?} quotes the input"
            );
        }
    }

    /// Rough cost of the seed translation (best of 5 rounds, so that a busy
    /// machine disturbs it less):
    /// `cargo test --release -- --ignored --nocapture seed_image_timing`.
    #[test]
    #[ignore = "timing loop, run by hand in release mode"]
    fn seed_image_timing() {
        const ROUNDS: u32 = 100_000;
        let xml = SEED_IMAGE.as_bytes();
        let mut best = std::time::Duration::MAX;
        for _ in 0..5 {
            let started = std::time::Instant::now();
            for _ in 0..ROUNDS {
                std::hint::black_box(xml_to_json(std::hint::black_box(xml)).unwrap());
            }
            best = best.min(started.elapsed() / ROUNDS);
        }
        eprintln!("seed Image: {} ns per translation", best.as_nanos());
    }
}
