//! Finds the line of a key path in the config's text, so errors can point at it.

use std::ops::Range;

use toml_edit::{Array, ArrayOfTables, Document, InlineTable, Item, Table, Value};

use super::{KeyPath, PathSegment};

/// The parsed text of a config file, with the position of every key.
pub struct SourceMap {
    text: String,
    document: Option<Document<String>>,
}

/// A place in the document that a path can descend into.
enum Node<'a> {
    Table(&'a Table),
    InlineTable(&'a InlineTable),
    Array(&'a Array),
    ArrayOfTables(&'a ArrayOfTables),
    Leaf,
}

impl<'a> Node<'a> {
    fn of_item(item: &'a Item) -> Node<'a> {
        match item {
            Item::Table(table) => Node::Table(table),
            Item::ArrayOfTables(tables) => Node::ArrayOfTables(tables),
            Item::Value(value) => Node::of_value(value),
            Item::None => Node::Leaf,
        }
    }

    fn of_value(value: &'a Value) -> Node<'a> {
        match value {
            Value::InlineTable(table) => Node::InlineTable(table),
            Value::Array(array) => Node::Array(array),
            _ => Node::Leaf,
        }
    }

    /// The child at `segment` and the span that best marks it (its key, else its value).
    fn child(&self, segment: &PathSegment) -> Option<(Option<Range<usize>>, Node<'a>)> {
        match (self, segment) {
            (Node::Table(table), PathSegment::Key(key)) => table
                .get_key_value(key)
                .map(|(k, item)| (k.span().or_else(|| item.span()), Node::of_item(item))),
            (Node::InlineTable(table), PathSegment::Key(key)) => table
                .get_key_value(key)
                .map(|(k, item)| (k.span().or_else(|| item.span()), Node::of_item(item))),
            (Node::Array(array), PathSegment::Index(i)) => array
                .get(*i)
                .map(|value| (value.span(), Node::of_value(value))),
            (Node::ArrayOfTables(tables), PathSegment::Index(i)) => tables
                .get(*i)
                .map(|table| (table.span(), Node::Table(table))),
            _ => None,
        }
    }
}

impl SourceMap {
    /// Parses `text` (already expanded) for positions. Text that does not parse has none.
    pub fn new(text: &str) -> SourceMap {
        SourceMap {
            text: text.to_string(),
            document: Document::parse(text.to_string()).ok(),
        }
    }

    /// The 1-based line of the deepest part of `path` present in the file.
    pub fn line_of(&self, path: &KeyPath) -> Option<usize> {
        let document = self.document.as_ref()?;
        let mut node = Node::Table(document.as_table());
        let mut offset = None;
        for segment in &path.0 {
            let Some((span, child)) = node.child(segment) else {
                break;
            };
            if let Some(span) = span {
                offset = Some(span.start);
            }
            node = child;
        }
        offset.map(|o| self.line_at(o))
    }

    /// The 1-based line of a byte offset.
    pub fn line_at(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"[service]
admin = "127.0.0.1:13133"

[exporters.tempo]
type = "otlp_grpc"
endpoint = "http://x"
headers = { "x-org" = "a" }

[pipelines.traces]
receivers = ["otlp"]
exporters = ["tempo",
  "nope"]
"#;

    #[test]
    fn finds_lines_of_keys_inline_tables_and_array_entries() {
        let map = SourceMap::new(TEXT);
        assert_eq!(
            map.line_of(&KeyPath::of(&["exporters", "tempo", "endpoint"])),
            Some(6)
        );
        assert_eq!(
            map.line_of(&KeyPath::of(&["exporters", "tempo", "headers", "x-org"])),
            Some(7)
        );
        assert_eq!(
            map.line_of(&KeyPath::of(&["pipelines", "traces", "exporters"]).index(1)),
            Some(12)
        );
    }

    #[test]
    fn missing_keys_fall_back_to_the_deepest_present_parent() {
        let map = SourceMap::new(TEXT);
        assert_eq!(
            map.line_of(&KeyPath::of(&["exporters", "tempo", "absent"])),
            Some(4)
        );
    }
}
