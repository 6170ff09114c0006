//! Bounds on a GraphQL document, each checked before the work grows with it: the
//! text is scanned for nesting and tokens before the (recursive) parser sees it, and
//! the parsed document is measured, fragments expanded in time linear in its size,
//! before the validator (which expands fragments anew for every use) runs. A refused
//! document costs about what reading its bytes costs.

use std::collections::HashMap;

use async_graphql::parser::types::{
    Directive, DocumentOperations, ExecutableDocument, Field, OperationDefinition, OperationType,
    Selection, SelectionSet,
};
use async_graphql::{Name, Positioned, Variables};
use async_graphql_value::{ConstValue, Value};

use crate::config::QueryLimits;
use crate::error::{AppError, printable};

/// How many files a mutation field stores or announces.
#[derive(Clone, Copy)]
pub enum FileCount {
    One,
    /// One per item of the named list argument.
    EachOf(&'static str),
}

/// Longest name (of a field, argument, alias, variable, fragment or operation) or
/// number in a query text. The validator measures an unknown name's distance to
/// every known one, in time its length times theirs, and echoes it in its error:
/// a 14 MB field name would hold a worker thread for seconds.
pub const MAX_NAME_BYTES: usize = 256;

/// Refuses a query text nested deeper than `max_nesting` brackets, with a name or
/// number longer than [`MAX_NAME_BYTES`], or longer than
/// `max_tokens` tokens, in one pass that never recurses; its tokens. Strings, block
/// strings and comments are skipped; malformed text is left to the parser, which
/// reports it.
pub fn scan(query: &str, limits: &QueryLimits) -> Result<u32, AppError> {
    let bytes = query.as_bytes();
    let (max_nesting, max_tokens) = (limits.max_query_nesting, limits.max_query_tokens);
    let (mut at, mut depth, mut tokens) = (0usize, 0u32, 0u32);
    while at < bytes.len() {
        let byte = bytes[at];
        at += 1;
        match byte {
            b' ' | b'\t' | b'\n' | b'\r' | b',' => continue,
            b'#' => {
                at =
                    memchr::memchr2(b'\n', b'\r', &bytes[at..]).map_or(bytes.len(), |end| at + end);
                continue;
            }
            b'"' if bytes[at..].starts_with(b"\"\"") => at = block_string_end(bytes, at + 2),
            b'"' => at = string_end(bytes, at),
            b'{' | b'[' | b'(' => {
                depth += 1;
                if depth > max_nesting {
                    return Err(AppError::bad_input(format!(
                        "the query is nested deeper than {max_nesting} brackets \
                         (MAX_QUERY_NESTING): flatten its selections or values"
                    )));
                }
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            b'.' if bytes[at..].starts_with(b"..") => at += 2,
            byte if byte == b'_' || byte == b'-' || byte.is_ascii_alphanumeric() => {
                // The longest run of name characters: `...` after a name, and a
                // number's `.`, `+` and `-`, end one.
                let (mut run, mut longest) = (1, 1);
                while at < bytes.len()
                    && matches!(bytes[at], b'_' | b'.' | b'+' | b'-' | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z')
                {
                    run = match bytes[at] {
                        b'.' | b'+' | b'-' => 0,
                        _ => run + 1,
                    };
                    longest = longest.max(run);
                    at += 1;
                }
                if longest > MAX_NAME_BYTES {
                    return Err(AppError::bad_input(format!(
                        "the query has a name or number longer than {MAX_NAME_BYTES} bytes: \
                         shorten it"
                    )));
                }
            }
            _ => {}
        }
        tokens += 1;
        if tokens > max_tokens {
            return Err(AppError::bad_input(format!(
                "the query has more than {max_tokens} tokens (MAX_QUERY_TOKENS): \
                 send fewer fields, or pass large values as variables"
            )));
        }
    }
    Ok(tokens)
}

/// The index just past the closing quote of the string that starts before `at`.
fn string_end(bytes: &[u8], mut at: usize) -> usize {
    while at < bytes.len() {
        match bytes[at] {
            b'\\' => at += 2,
            b'"' | b'\n' | b'\r' => return at + 1,
            _ => at += 1,
        }
    }
    bytes.len()
}

/// The index just past the `"""` that closes the block string opened before `at`.
fn block_string_end(bytes: &[u8], mut at: usize) -> usize {
    while at < bytes.len() {
        if bytes[at..].starts_with(b"\\\"\"\"") {
            at += 4;
        } else if bytes[at..].starts_with(b"\"\"\"") {
            return at + 3;
        } else {
            at += 1;
        }
    }
    bytes.len()
}

/// What a parsed document would cost, fragments expanded with multiplicity.
#[derive(Clone, Debug)]
pub struct Shape {
    /// Nodes (selections, directives, argument values) of every operation and every
    /// fragment definition, each expanded.
    pub expanded: u64,
    /// Each operation's name and its complexity: 1, plus 1 per field expanded.
    operations: Vec<(Option<Name>, u64)>,
}

impl Shape {
    /// The complexity of the operation a request runs; 0 when it names none that
    /// exists (the executor reports that).
    pub fn complexity(&self, operation_name: Option<&str>) -> u64 {
        let found = match operation_name {
            Some(wanted) => self
                .operations
                .iter()
                .find(|(name, _)| name.as_deref() == Some(wanted)),
            None if self.operations.len() == 1 => self.operations.first(),
            None => None,
        };
        found.map_or(0, |(_, complexity)| *complexity)
    }
}

/// The size of a selection set once its fragments are expanded.
#[derive(Clone, Copy, Default)]
struct Size {
    fields: u64,
    /// What the validator visits: selections, directives and argument values
    /// (every item of a list, every variable read), each one node.
    nodes: u64,
    /// Deepest field nesting below the set.
    depth: u32,
    /// Deepest nesting of fragment spreads below the set.
    spreads: u32,
}

impl Size {
    fn add(&mut self, other: Size) {
        self.fields = self.fields.saturating_add(other.fields);
        self.nodes = self.nodes.saturating_add(other.nodes);
        self.depth = self.depth.max(other.depth);
        self.spreads = self.spreads.max(other.spreads);
    }
}

/// Measures `document` in time linear in its size: each fragment is expanded once
/// and remembered. Refuses fragment cycles, spreads nested deeper than
/// MAX_QUERY_NESTING, selections deeper than MAX_QUERY_DEPTH and more expanded
/// nodes than MAX_EXPANDED_FIELDS. The validator walks every operation of the
/// document, whichever runs, and reports an error per variable a fragment reads for
/// every operation that spreads it: directives and argument values count too, or
/// a 64 KiB document of a thousand operations spreading one fragment that reads
/// thousands of undefined variables made millions of errors.
pub fn measure(document: &ExecutableDocument, limits: &QueryLimits) -> Result<Shape, AppError> {
    let mut sizes = Sizes {
        document,
        limits,
        known: HashMap::new(),
        open: Vec::new(),
    };
    let mut expanded: u64 = 0;
    for name in document.fragments.keys() {
        expanded = expanded.saturating_add(sizes.fragment(name)?.nodes);
    }
    let mut operations = Vec::new();
    for (name, operation) in document.operations.iter() {
        let operation = &operation.node;
        let size = sizes.selection_set(&operation.selection_set.node)?;
        let variables = operation.variable_definitions.iter().map(|definition| {
            let default = definition.node.default_value.as_ref();
            directive_nodes(&definition.node.directives).saturating_add(
                default.map_or(1, |value| const_value_nodes(&value.node).saturating_add(1)),
            )
        });
        let own = variables.fold(directive_nodes(&operation.directives), u64::saturating_add);
        expanded = expanded.saturating_add(size.nodes).saturating_add(own);
        operations.push((name.cloned(), size.fields.saturating_add(1)));
    }
    if expanded > u64::from(limits.max_expanded_fields) {
        return Err(too_many_nodes(limits));
    }
    Ok(Shape {
        expanded,
        operations,
    })
}

struct Sizes<'a> {
    document: &'a ExecutableDocument,
    limits: &'a QueryLimits,
    known: HashMap<&'a Name, Size>,
    /// The fragments being expanded, outermost first: a cycle and the spread depth.
    open: Vec<&'a Name>,
}

impl<'a> Sizes<'a> {
    fn fragment(&mut self, name: &'a Name) -> Result<Size, AppError> {
        if let Some(size) = self.known.get(name) {
            return Ok(*size);
        }
        // An unknown fragment is the validator's to report; it expands to nothing.
        let Some(fragment) = self.document.fragments.get(name) else {
            return Ok(Size::default());
        };
        if self.open.contains(&name) {
            return Err(AppError::bad_input(format!(
                "the fragment {name} spreads itself"
            )));
        }
        // A chain is measured in pieces when parts of it are known; the walk itself
        // stops at the bound, so it never recurses deeper than that.
        if self.open.len() > self.limits.max_query_nesting as usize {
            let chain = Size {
                spreads: u32::MAX,
                ..Size::default()
            };
            return self.check(chain).map(|()| chain);
        }
        self.open.push(name);
        let size = self.selection_set(&fragment.node.selection_set.node);
        self.open.pop();
        let mut size = size?;
        size.spreads += 1;
        size.nodes = size
            .nodes
            .saturating_add(directive_nodes(&fragment.node.directives));
        self.check(size)?;
        self.known.insert(name, size);
        Ok(size)
    }

    fn selection_set(&mut self, set: &'a SelectionSet) -> Result<Size, AppError> {
        let mut total = Size::default();
        for selection in &set.items {
            let (size, directives) = match &selection.node {
                Selection::Field(field) => {
                    let field = &field.node;
                    let inner = self.selection_set(&field.selection_set.node)?;
                    let size = Size {
                        fields: inner.fields.saturating_add(1),
                        nodes: inner.nodes.saturating_add(argument_nodes(&field.arguments)),
                        depth: inner.depth + 1,
                        spreads: inner.spreads,
                    };
                    (size, &field.directives)
                }
                Selection::FragmentSpread(spread) => (
                    self.fragment(&spread.node.fragment_name.node)?,
                    &spread.node.directives,
                ),
                Selection::InlineFragment(inline) => (
                    self.selection_set(&inline.node.selection_set.node)?,
                    &inline.node.directives,
                ),
            };
            let own = directive_nodes(directives).saturating_add(1);
            total.add(Size {
                nodes: size.nodes.saturating_add(own),
                ..size
            });
            self.check(total)?;
        }
        Ok(total)
    }

    /// Stops an expansion as soon as it is too large or too deep.
    fn check(&self, size: Size) -> Result<(), AppError> {
        let most = self.limits.max_query_nesting;
        if size.spreads > most {
            return Err(AppError::bad_input(format!(
                "fragments spread inside fragments more than {most} deep (MAX_QUERY_NESTING)"
            )));
        }
        if size.nodes > u64::from(self.limits.max_expanded_fields) {
            return Err(too_many_nodes(self.limits));
        }
        let deepest = self.limits.max_query_depth;
        if size.depth > deepest {
            return Err(AppError::bad_input(format!(
                "the query is nested too deep: more than {deepest} levels of fields \
                 (MAX_QUERY_DEPTH)"
            )));
        }
        Ok(())
    }
}

/// The refusal of a document that expands past MAX_EXPANDED_FIELDS.
fn too_many_nodes(limits: &QueryLimits) -> AppError {
    let most = limits.max_expanded_fields;
    AppError::bad_input(format!(
        "the query expands to more than {most} fields, directives and argument values once \
         its fragments are spread (MAX_EXPANDED_FIELDS): spread fewer fragments, send fewer \
         fields or pass long lists as variables"
    ))
}

/// The nodes of directives: each one, and its arguments' values.
fn directive_nodes(directives: &[Positioned<Directive>]) -> u64 {
    directives
        .iter()
        .map(|directive| argument_nodes(&directive.node.arguments).saturating_add(1))
        .fold(0, u64::saturating_add)
}

/// The nodes of arguments' values: every value, list item and object field.
fn argument_nodes(arguments: &[(Positioned<Name>, Positioned<Value>)]) -> u64 {
    arguments
        .iter()
        .map(|(_, value)| value_nodes(&value.node))
        .fold(0, u64::saturating_add)
}

fn value_nodes(value: &Value) -> u64 {
    match value {
        Value::List(items) => items.iter().map(value_nodes).fold(1, u64::saturating_add),
        Value::Object(fields) => fields
            .values()
            .map(value_nodes)
            .fold(1, u64::saturating_add),
        _ => 1,
    }
}

fn const_value_nodes(value: &ConstValue) -> u64 {
    match value {
        ConstValue::List(items) => items
            .iter()
            .map(const_value_nodes)
            .fold(1, u64::saturating_add),
        ConstValue::Object(fields) => fields
            .values()
            .map(const_value_nodes)
            .fold(1, u64::saturating_add),
        _ => 1,
    }
}

/// A list field that a request is charged rows for before it runs.
pub struct ListField {
    pub name: &'static str,
    /// The argument that says how many rows a page holds, its default and its most
    /// (a larger page is the resolver's to refuse).
    pub first: &'static str,
    pub default_first: u64,
    pub most_first: u64,
    /// A field of the list that counts every row of its scope, and what it is
    /// charged: a count reads the whole scope's index, not a page of it.
    pub count: &'static str,
    pub count_rows: u64,
}

/// The operation a request runs, with the variables its arguments read. The walks
/// below spread fragments with multiplicity: [`measure`] already bounded that
/// expansion and refused cycles.
pub struct Running<'a> {
    document: &'a ExecutableDocument,
    operation: &'a OperationDefinition,
    variables: &'a Variables,
}

/// An argument as the executor will see it.
enum Argument<'a> {
    Literal(&'a Value),
    Variable(&'a ConstValue),
    Absent,
}

impl<'a> Running<'a> {
    /// The operation `operation_name` picks, as the executor would pick it (one
    /// operation, named or not, runs without a name); refused when there is none, before
    /// validation reads every operation of the document.
    pub fn find(
        document: &'a ExecutableDocument,
        operation_name: Option<&str>,
        variables: &'a Variables,
    ) -> Result<Self, AppError> {
        let operation = match (&document.operations, operation_name) {
            (DocumentOperations::Single(operation), None) => Some(operation),
            (DocumentOperations::Multiple(operations), Some(name)) => operations.get(name),
            (DocumentOperations::Multiple(operations), None) if operations.len() == 1 => {
                operations.values().next()
            }
            (DocumentOperations::Multiple(_), None) => {
                return Err(AppError::bad_input(
                    "the document has several operations: name the one to run in `operationName`",
                ));
            }
            (DocumentOperations::Single(_), Some(_)) => None,
        };
        let operation = operation.ok_or_else(|| {
            AppError::bad_input(format!(
                "the document has no operation named `{}`",
                printable(operation_name.unwrap_or_default())
            ))
        })?;
        Ok(Self {
            document,
            operation: &operation.node,
            variables,
        })
    }

    /// Whether the operation is a mutation (which a GET may not run).
    pub fn is_mutation(&self) -> bool {
        self.operation.ty == OperationType::Mutation
    }

    /// How many files a mutation would store or announce: every field of
    /// `file_fields` at its root, through aliases, fragments and list arguments,
    /// whether a literal, a variable or a variable's default holds the list.
    pub fn files(&self, file_fields: &[(&str, FileCount)]) -> u64 {
        if self.operation.ty != OperationType::Mutation {
            return 0;
        }
        let files = |field: &Field| {
            let count = file_fields
                .iter()
                .find(|(name, _)| *name == field.name.node.as_str())
                .map(|(_, count)| *count);
            match count {
                None => 0,
                Some(FileCount::One) => 1,
                Some(FileCount::EachOf(argument)) => self.list_length(field, argument),
            }
        };
        self.fields_of(&self.operation.selection_set.node)
            .into_iter()
            .map(files)
            .fold(0, u64::saturating_add)
    }

    /// How many rows a query asks for: each `list` field at its root counts its page,
    /// and each of its count fields what a count costs.
    pub fn rows(&self, list: &ListField) -> u64 {
        if self.operation.ty != OperationType::Query {
            return 0;
        }
        let rows = |field: &Field| {
            let page = match self.argument(field, list.first) {
                Argument::Literal(Value::Number(first))
                | Argument::Variable(ConstValue::Number(first)) => first
                    .as_i64()
                    .map_or(list.most_first, |first| first.max(0).unsigned_abs())
                    .min(list.most_first),
                _ => list.default_first,
            };
            let counts = self
                .fields_of(&field.selection_set.node)
                .into_iter()
                .filter(|inner| inner.name.node == list.count)
                .count() as u64;
            page.saturating_add(counts.saturating_mul(list.count_rows))
        };
        self.fields_of(&self.operation.selection_set.node)
            .into_iter()
            .filter(|field| field.name.node == list.name)
            .map(rows)
            .fold(0, u64::saturating_add)
    }

    /// The fields of `set`, its fragments spread, not the fields below them.
    fn fields_of(&self, set: &'a SelectionSet) -> Vec<&'a Field> {
        let mut fields = Vec::new();
        self.gather(set, &mut Vec::new(), &mut fields);
        fields
    }

    fn gather(&self, set: &'a SelectionSet, open: &mut Vec<&'a Name>, fields: &mut Vec<&'a Field>) {
        for selection in &set.items {
            match &selection.node {
                Selection::Field(field) => fields.push(&field.node),
                Selection::InlineFragment(inline) => {
                    self.gather(&inline.node.selection_set.node, open, fields);
                }
                Selection::FragmentSpread(spread) => {
                    let name = &spread.node.fragment_name.node;
                    if let Some(fragment) = self.document.fragments.get(name)
                        && !open.contains(&name)
                    {
                        open.push(name);
                        self.gather(&fragment.node.selection_set.node, open, fields);
                        open.pop();
                    }
                }
            }
        }
    }

    /// The bytes of the arguments the request makes async-graphql copy: it copies a
    /// variable's value for every argument that reads it, once as it validates each
    /// operation and fragment definition and again as it runs each expanded field,
    /// so a large string read by hundreds of aliases costs its size hundreds of
    /// times. Counted here: the operation's own directives and its fields expanded
    /// through their fragments, and each fragment definition once more, spread or
    /// not; each variable and fragment measured once, in time linear in the text.
    pub fn argument_bytes(&self) -> u64 {
        let variables = self
            .operation
            .variable_definitions
            .iter()
            .map(|definition| {
                let name = &definition.node.name.node;
                (name, self.variable(name).map_or(0, const_value_bytes))
            })
            .collect();
        let mut walk = ArgumentWalk {
            document: self.document,
            variables,
            fragments: HashMap::new(),
        };
        let operation = walk
            .directives(&self.operation.directives)
            .saturating_add(walk.selections(&self.operation.selection_set.node, true));
        self.document
            .fragments
            .values()
            .map(|fragment| {
                walk.directives(&fragment.node.directives)
                    .saturating_add(walk.selections(&fragment.node.selection_set.node, false))
            })
            .fold(operation, u64::saturating_add)
    }

    /// A variable's value: the request's, else the operation's default for it.
    fn variable(&self, name: &Name) -> Option<&'a ConstValue> {
        self.variables.get(name).or_else(|| {
            self.operation
                .variable_definitions
                .iter()
                .find(|definition| definition.node.name.node == *name)
                .and_then(|definition| definition.node.default_value.as_ref())
                .map(|default| &default.node)
        })
    }

    /// `field`'s argument `name`, a variable read through [`Running::variable`].
    fn argument(&self, field: &'a Field, name: &str) -> Argument<'a> {
        match field.get_argument(name).map(|value| &value.node) {
            None => Argument::Absent,
            Some(Value::Variable(variable)) => self
                .variable(variable)
                .map_or(Argument::Absent, Argument::Variable),
            Some(literal) => Argument::Literal(literal),
        }
    }

    /// A list argument's length; any other value counts as one (GraphQL coerces it
    /// to a list of one).
    fn list_length(&self, field: &'a Field, name: &str) -> u64 {
        match self.argument(field, name) {
            Argument::Literal(Value::List(items)) => items.len() as u64,
            Argument::Variable(ConstValue::List(items)) => items.len() as u64,
            Argument::Absent
            | Argument::Literal(Value::Null)
            | Argument::Variable(ConstValue::Null) => 0,
            _ => 1,
        }
    }
}

/// [`Running::argument_bytes`]' walk over a document.
struct ArgumentWalk<'a> {
    document: &'a ExecutableDocument,
    /// Each variable's size, measured once however often it is read.
    variables: HashMap<&'a Name, u64>,
    /// Each fragment's bytes with its spreads expanded, measured once.
    fragments: HashMap<&'a Name, u64>,
}

impl<'a> ArgumentWalk<'a> {
    /// The bytes the selections' fields and directives read; a spread counts its
    /// fragment's when `expand`.
    fn selections(&mut self, set: &'a SelectionSet, expand: bool) -> u64 {
        let mut total: u64 = 0;
        for selection in &set.items {
            let bytes = match &selection.node {
                Selection::Field(field) => self
                    .arguments(&field.node.arguments)
                    .saturating_add(self.directives(&field.node.directives))
                    .saturating_add(self.selections(&field.node.selection_set.node, expand)),
                Selection::InlineFragment(inline) => self
                    .directives(&inline.node.directives)
                    .saturating_add(self.selections(&inline.node.selection_set.node, expand)),
                Selection::FragmentSpread(spread) => {
                    let own = self.directives(&spread.node.directives);
                    match expand {
                        true => own.saturating_add(self.fragment(&spread.node.fragment_name.node)),
                        false => own,
                    }
                }
            };
            total = total.saturating_add(bytes);
        }
        total
    }

    fn fragment(&mut self, name: &'a Name) -> u64 {
        if let Some(bytes) = self.fragments.get(name) {
            return *bytes;
        }
        let Some(fragment) = self.document.fragments.get(name) else {
            return 0;
        };
        // A cycle ([`measure`] refused it already) counts nothing the second time round.
        self.fragments.insert(name, 0);
        let bytes = self.selections(&fragment.node.selection_set.node, true);
        self.fragments.insert(name, bytes);
        bytes
    }

    fn arguments(&self, arguments: &[(Positioned<Name>, Positioned<Value>)]) -> u64 {
        arguments
            .iter()
            .map(|(_, value)| self.value(&value.node))
            .fold(0, u64::saturating_add)
    }

    fn directives(&self, directives: &[Positioned<Directive>]) -> u64 {
        directives
            .iter()
            .map(|directive| self.arguments(&directive.node.arguments))
            .fold(0, u64::saturating_add)
    }

    /// A value's size as the executor copies it: its strings' bytes, a byte for
    /// anything else, a variable's value where it is read.
    fn value(&self, value: &Value) -> u64 {
        match value {
            Value::Variable(name) => self.variables.get(name).copied().unwrap_or(0),
            Value::String(text) => text.len() as u64,
            Value::Binary(bytes) => bytes.len() as u64,
            Value::List(items) => items
                .iter()
                .map(|item| self.value(item))
                .fold(1, u64::saturating_add),
            Value::Object(fields) => fields
                .iter()
                .map(|(name, value)| (name.len() as u64).saturating_add(self.value(value)))
                .fold(1, u64::saturating_add),
            Value::Null | Value::Number(_) | Value::Boolean(_) | Value::Enum(_) => 1,
        }
    }
}

/// [`ArgumentWalk::value`] of a variable's value.
fn const_value_bytes(value: &ConstValue) -> u64 {
    match value {
        ConstValue::String(text) => text.len() as u64,
        ConstValue::Binary(bytes) => bytes.len() as u64,
        ConstValue::List(items) => items
            .iter()
            .map(const_value_bytes)
            .fold(1, u64::saturating_add),
        ConstValue::Object(fields) => fields
            .iter()
            .map(|(name, value)| (name.len() as u64).saturating_add(const_value_bytes(value)))
            .fold(1, u64::saturating_add),
        ConstValue::Null | ConstValue::Number(_) | ConstValue::Boolean(_) | ConstValue::Enum(_) => {
            1
        }
    }
}

/// The error of a body found to hold more files than a request may store, before
/// they were all counted.
pub fn too_many_files(most: u64) -> AppError {
    AppError::bad_input(format!(
        "the request has more than {most} files (MAX_BATCH_FILES): send the files in several requests"
    ))
}

/// The error of a request whose bound was passed.
pub fn too_many(what: &str, count: u64, most: u64, setting: &str, fix: &str) -> AppError {
    AppError::bad_input(format!(
        "the request has {count} {what}, more than {most} ({setting}): {fix}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_refuses_deep_brackets_but_not_brackets_in_strings_or_comments() {
        let deep = format!("{{a(x: {}{})}}", "[".repeat(40), "]".repeat(40));
        assert!(scan(&deep, &QueryLimits::default()).is_err());
        let hidden = format!(
            "{{a(x: \"{}\", y: \"\"\"{}\\\"\"\" \"\"\") # {}\n}}",
            "[".repeat(100),
            "{".repeat(100),
            "(".repeat(100)
        );
        assert!(scan(&hidden, &QueryLimits::default()).is_ok(), "{hidden}");
        let tokens = format!("{{ {} }}", "a ".repeat(60_000));
        assert!(scan(&tokens, &QueryLimits::default()).is_err());
    }

    /// A name or number is at most MAX_NAME_BYTES; spreads written without spaces
    /// (`{...A...B}`) are names each, not one long one.
    #[test]
    fn scan_bounds_each_name_and_number() {
        let limits = QueryLimits::default();
        let name = |length: usize| format!("N{}", "a".repeat(length - 1));
        assert!(scan(&format!("{{ {} }}", name(MAX_NAME_BYTES)), &limits).is_ok());
        assert!(scan(&format!("{{ {} }}", name(MAX_NAME_BYTES + 1)), &limits).is_err());
        let number = format!("{{ a(x: {}) }}", "9".repeat(MAX_NAME_BYTES + 1));
        assert!(scan(&number, &limits).is_err());
        let minified = format!("{{...{}}}", vec![name(200); 10].join("..."));
        assert!(scan(&minified, &limits).is_ok(), "{minified}");
        assert!(scan("{ a(x: -1.5e+300) }", &limits).is_ok());
    }

    fn fragments(levels: usize, spreads: usize) -> ExecutableDocument {
        let fragments: String = (0..levels)
            .map(|i| {
                let spread = format!("...F{} ", i + 1).repeat(spreads);
                format!("fragment F{i} on Query {{ {spread} }} ")
            })
            .collect();
        let query = format!("{{ ...F0 }} {fragments} fragment F{levels} on Query {{ __typename }}");
        async_graphql::parser::parse_query(&query).expect("parses")
    }

    #[test]
    fn fragment_doubling_is_measured_without_expanding_it() {
        // Whichever bound the walk meets first (fragments are kept unordered).
        let refused = measure(&fragments(40, 2), &QueryLimits::default()).expect_err("refused");
        let message = refused.to_string();
        assert!(
            message.contains("MAX_EXPANDED_FIELDS") || message.contains("MAX_QUERY_NESTING"),
            "{message}"
        );
        let refused = measure(&fragments(20, 2), &QueryLimits::default()).expect_err("refused");
        assert!(
            refused.to_string().contains("MAX_EXPANDED_FIELDS"),
            "{refused}"
        );
        let refused = measure(&fragments(40, 1), &QueryLimits::default()).expect_err("refused");
        assert!(
            refused.to_string().contains("MAX_QUERY_NESTING"),
            "{refused}"
        );
        let shape = measure(&fragments(6, 2), &QueryLimits::default()).expect("fits");
        assert!(shape.expanded > 128, "{shape:?}");
    }

    #[test]
    fn complexity_counts_every_field_and_the_operation() {
        let aliases: String = (0..5).map(|i| format!("a{i}: __typename ")).collect();
        let document = async_graphql::parser::parse_query(format!(
            "query Q {{ {aliases} __schema {{ types {{ name }} }} }}"
        ))
        .expect("parses");
        let shape = measure(&document, &QueryLimits::default()).expect("fits");
        assert_eq!(shape.complexity(Some("Q")), 1 + 5 + 3);
        assert_eq!(shape.complexity(None), 9);
        assert_eq!(shape.complexity(Some("other")), 0);
    }

    fn running<'a>(document: &'a ExecutableDocument, variables: &'a Variables) -> Running<'a> {
        Running::find(document, None, variables).unwrap_or_else(|_| panic!("one operation"))
    }

    #[test]
    fn files_are_counted_through_aliases_fragments_lists_and_defaults() {
        let fields = [
            ("one", FileCount::One),
            ("many", FileCount::EachOf("input")),
        ];
        let query = "mutation($list: [In!]!, $preset: [In!] = [{x: 1}, {x: 2}]) { a: one b: one \
                     ...M ... on Mutation { many(input: $list) } many(input: [{x: 1}, {x: 2}, {x: 3}]) \
                     preset: many(input: $preset) } fragment M on Mutation { c: one }";
        let document = async_graphql::parser::parse_query(query).expect("parses");
        let variables = Variables::from_json(serde_json::json!({ "list": [1, 2, 3, 4] }));
        assert_eq!(running(&document, &variables).files(&fields), 3 + 4 + 3 + 2);
        let given = Variables::from_json(serde_json::json!({ "list": [1], "preset": [1, 2, 3] }));
        assert_eq!(running(&document, &given).files(&fields), 3 + 1 + 3 + 3);
        let query_op = async_graphql::parser::parse_query("{ one }").expect("parses");
        assert_eq!(running(&query_op, &variables).files(&fields), 0);
    }

    #[test]
    fn argument_bytes_count_a_variable_at_each_use() {
        let query = "query($s: String, $preset: String = \"abcd\") { a: f(x: $s) b: f(x: $s) ...F \
                     ... on Query @include(if: true) { g(y: [\"xy\", $preset], z: {k: \"v\"}) } } \
                     fragment F on Query { c: f(x: $s) }";
        let document = async_graphql::parser::parse_query(query).expect("parses");
        let variables = Variables::from_json(serde_json::json!({ "s": "0123456789" }));
        // Three uses of $s, the directive's `true`, the list (1 + "xy" + "abcd") and
        // the object (1 + "k" + "v"); then F's definition once more, as validation
        // reads it.
        assert_eq!(
            running(&document, &variables).argument_bytes(),
            3 * 10 + 1 + 7 + 3 + 10
        );
        let given = Variables::from_json(serde_json::json!({ "s": "", "preset": "abcdefgh" }));
        assert_eq!(running(&document, &given).argument_bytes(), 1 + 11 + 3);
        // A named operation sent without its name, and the operation's own directives.
        let named = "query Q($s: String) @skip(if: $s) @skip(if: $s) { f(x: $s) } \
                     fragment Unused on Query { g(x: $s) }";
        let document = async_graphql::parser::parse_query(named).expect("parses");
        assert_eq!(
            running(&document, &variables).argument_bytes(),
            4 * 10,
            "two directives, the field and the unused fragment"
        );
    }

    #[test]
    fn the_operation_is_found_as_the_executor_finds_it() {
        let none = Variables::default();
        let find = |query: &str, name: Option<&str>| {
            let document = async_graphql::parser::parse_query(query).expect("parses");
            Running::find(&document, name, &none)
                .map(|_| ())
                .map_err(|err| err.to_string())
        };
        assert!(find("{ a }", None).is_ok());
        assert!(find("query Q { a }", None).is_ok());
        assert!(find("query Q { a }", Some("Q")).is_ok());
        assert!(find("query Q { a } query R { b }", Some("R")).is_ok());
        let several = find("query Q { a } query R { b }", None).expect_err("refused");
        assert!(several.contains("operationName"), "{several}");
        assert!(find("query Q { a }", Some("R")).is_err());
        assert!(find("{ a }", Some("R")).is_err());
    }

    #[test]
    fn rows_count_each_page_and_each_count() {
        let list = ListField {
            name: "items",
            first: "first",
            default_first: 20,
            most_first: 100,
            count: "total",
            count_rows: 100,
        };
        let query = "query($n: Int, $preset: Int = 7) { a: items { total t: total } \
                     b: items(first: 5) { ...C } c: items(first: $n) d: items(first: $preset) \
                     e: items(first: 100000) f: items(first: -3) other } \
                     fragment C on Connection { total ... on Connection { total } }";
        let document = async_graphql::parser::parse_query(query).expect("parses");
        let none = Variables::default();
        let pages = 20 + 5 + 20 + 7 + 100;
        assert_eq!(running(&document, &none).rows(&list), pages + 4 * 100);
        let given = Variables::from_json(serde_json::json!({ "n": 50, "preset": 1 }));
        assert_eq!(
            running(&document, &given).rows(&list),
            pages - 20 + 50 - 7 + 1 + 4 * 100
        );
        let mutation = async_graphql::parser::parse_query("mutation { items }").expect("parses");
        assert_eq!(running(&mutation, &none).rows(&list), 0);
    }
}
