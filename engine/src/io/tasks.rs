//! Task input: JSON Lines and Parquet task files, and Arrow batches of tasks (as Flight receives
//! them), read into validated [`Task`]s.
//!
//! Everything is validated before a job starts: the first problem stops reading and comes back as
//! an [`InputError`] whose message names the file, the line or row, and the field or column.

use std::collections::hash_map::{Entry, HashMap};
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Float64Builder, Int32Builder, Int64Array, MapBuilder,
    RecordBatch, StringArray, StringBuilder,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type, Schema};
use arrow::error::ArrowError;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::ChunkReader;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use serde_json::value::RawValue;

use super::openai_batch::{BatchEndpoint, BatchLine};
use super::schema::{result_schema, task_schema, type_name, Id, INPUT_INDEX, TASK_COLUMNS};
use crate::config::MAX_PREFERENCE_WEIGHT;
use crate::task::Task;

/// The check of every task's preference against `cfg`'s catalog: each key must be an alias,
/// `cost` or `latency`, each weight a finite number. For [`read_task_file`] and [`read_tasks`].
pub fn preference_check(cfg: &crate::config::Config) -> impl Fn(&Task) -> Result<(), FieldError> {
    let catalog = crate::catalog::Catalog::new(cfg);
    move |t: &Task| {
        catalog
            .check_preference(&t.preference)
            .map_err(|message| FieldError::new("preference", message))
    }
}

/// A problem with one field of one task, found by a caller's check (for example a preference key
/// that is not an alias of the catalog). The reader adds the file and line or row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field, as the user wrote it: `budget_usd`, or `preference.<key>` for one weight.
    pub field: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Where a task sits in its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// A line of a JSON Lines file (1-based; blank lines count), with the column where the JSON
    /// parser gave one.
    Line { line: usize, column: Option<usize> },
    /// A row of a table, 1-based over the whole input (across batches and row groups).
    Row(usize),
}

/// Shown as `line 2` or `row 2`, as in "first seen on line 2".
impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Line { line, .. } => write!(f, "line {line}"),
            Position::Row(row) => write!(f, "row {row}"),
        }
    }
}

/// An input (a path, or a label such as a Flight job) and a position in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub input: String,
    pub position: Position,
}

/// Shown as `tasks.jsonl:3`, `tasks.jsonl:3:17` or `tasks.parquet: row 3`.
impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Position::Line {
                line,
                column: Some(column),
            } => {
                write!(f, "{}:{line}:{column}", self.input)
            }
            Position::Line { line, column: None } => write!(f, "{}:{line}", self.input),
            Position::Row(row) => write!(f, "{}: row {row}", self.input),
        }
    }
}

/// Why a task input was rejected. Each message is one line naming the input, the line or row, and
/// the field or column.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{input}: {source}")]
    Io { input: String, source: io::Error },
    #[error(
        "{input}: unsupported task file; expected a .jsonl, .ndjson or .json (JSON Lines) \
         or a .parquet file"
    )]
    UnsupportedFormat { input: String },
    #[error("{input}: not a readable Parquet file: {source}")]
    Parquet { input: String, source: ParquetError },
    #[error("{input}: {source}")]
    Arrow { input: String, source: ArrowError },
    #[error("{at}: malformed JSON: {message}")]
    MalformedJson { at: Location, message: String },
    #[error("{at}: expected a task object (one JSON object per line), found {found}")]
    NotAnObject { at: Location, found: &'static str },
    #[error("{at}: unknown field `{field}`; accepted fields: {}", TASK_COLUMNS.join(", "))]
    UnknownField { at: Location, field: String },
    #[error("{at}: missing field `{field}`")]
    MissingField { at: Location, field: &'static str },
    #[error("{at}: field `{field}` is null")]
    NullField { at: Location, field: &'static str },
    #[error("{at}: field `{field}`: {message}")]
    Field {
        at: Location,
        field: String,
        message: String,
    },
    #[error("{at}: duplicate id `{id}` (first seen on {first})")]
    DuplicateId {
        at: Location,
        id: String,
        first: Position,
    },
    #[error("{input}: unknown column `{column}`; accepted columns: {}", TASK_COLUMNS.join(", "))]
    UnknownColumn { input: String, column: String },
    #[error(
        "{at}: field `{field}` has the name of a result column; fields beyond the task's are \
         passed through to the results, so rename it"
    )]
    ReservedField { at: Location, field: String },
    #[error(
        "{input}: column `{column}` has the name of a result column; columns beyond the task's \
         are passed through to the results, so rename it"
    )]
    ReservedColumn { input: String, column: String },
    #[error("{input}: the fields beyond the task's cannot be read as one column each: {source}")]
    ExtraFields { input: String, source: ArrowError },
    #[error("{input}: column `{column}` appears more than once")]
    DuplicateColumn { input: String, column: String },
    #[error("{input}: missing required column `{column}`")]
    MissingColumn { input: String, column: &'static str },
    #[error("{input}: column `{column}`: expected {expected}, found {found}")]
    ColumnType {
        input: String,
        column: &'static str,
        expected: &'static str,
        found: String,
    },
}

impl InputError {
    /// Where in the input the problem is, when it is about one task.
    pub fn location(&self) -> Option<&Location> {
        match self {
            InputError::MalformedJson { at, .. }
            | InputError::NotAnObject { at, .. }
            | InputError::UnknownField { at, .. }
            | InputError::MissingField { at, .. }
            | InputError::NullField { at, .. }
            | InputError::ReservedField { at, .. }
            | InputError::Field { at, .. }
            | InputError::DuplicateId { at, .. } => Some(at),
            _ => None,
        }
    }

    /// The field or column at fault, when the problem is with one.
    pub fn field(&self) -> Option<&str> {
        match self {
            InputError::UnknownField { field, .. }
            | InputError::ReservedField { field, .. }
            | InputError::Field { field, .. } => Some(field),
            InputError::MissingField { field, .. } | InputError::NullField { field, .. } => {
                Some(field)
            }
            InputError::UnknownColumn { column, .. }
            | InputError::ReservedColumn { column, .. }
            | InputError::DuplicateColumn { column, .. } => Some(column),
            InputError::MissingColumn { column, .. } | InputError::ColumnType { column, .. } => {
                Some(column)
            }
            InputError::DuplicateId { .. } => Some("id"),
            _ => None,
        }
    }
}

/// A task file as read: its tasks in input order, the columns beyond the task schema, and, for
/// OpenAI batch JSON Lines, the endpoint its requests named.
#[derive(Debug, Default)]
pub struct TaskFile {
    pub tasks: Vec<Task>,
    /// The input's other columns (JSON Lines: its other keys), one row per task, in the same
    /// order: passed through to the results.
    pub extras: Option<RecordBatch>,
    /// Set when the input was OpenAI batch JSON Lines (`custom_id`, `body`).
    pub openai_batch: Option<BatchEndpoint>,
}

impl TaskFile {
    /// The names of the columns passed through, in input order.
    pub fn extra_columns(&self) -> Vec<String> {
        self.extras.as_ref().map_or_else(Vec::new, |b| {
            b.schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect()
        })
    }
}

/// Reads and validates a task file: JSON Lines (`.jsonl`, `.ndjson`, `.json`) or Parquet
/// (`.parquet`), chosen by extension; the path `-` reads JSON Lines from standard input.
/// Columns (JSON Lines: keys) beyond the task schema's are kept, to be passed through to the
/// results; a JSON Lines file whose first line has a `custom_id` is read as OpenAI batch input
/// (see `super::openai_batch`).
///
/// Besides the schema, each task must have a non-empty id unique in the file, `max_turns >= 1` and
/// a finite `budget_usd >= 0`; then `check` validates it against the caller's catalog. The first
/// problem stops reading.
pub fn read_task_file(
    path: &Path,
    check: &dyn Fn(&Task) -> Result<(), FieldError>,
) -> Result<TaskFile, InputError> {
    if path == Path::new("-") {
        let stdin = std::io::stdin();
        return read_jsonl(stdin.lock(), "<stdin>".into(), check);
    }
    let input = path.display().to_string();
    match TaskFormat::of(path) {
        Some(TaskFormat::JsonLines) => {
            let file = File::open(path).map_err(|source| InputError::Io {
                input: input.clone(),
                source,
            })?;
            read_jsonl(BufReader::new(file), input, check)
        }
        Some(TaskFormat::Parquet) => {
            let file = File::open(path).map_err(|source| InputError::Io {
                input: input.clone(),
                source,
            })?;
            read_parquet(file, input, check)
        }
        None => Err(InputError::UnsupportedFormat { input }),
    }
}

/// Reads and validates a task file held in memory, as [`read_task_file`] reads one from disk:
/// `name` chooses the format by its extension and names the input in errors. (The fuzz targets
/// of `fuzz/` read their inputs through it.)
pub fn read_task_bytes(
    name: &Path,
    bytes: Vec<u8>,
    check: &dyn Fn(&Task) -> Result<(), FieldError>,
) -> Result<TaskFile, InputError> {
    let input = name.display().to_string();
    match TaskFormat::of(name) {
        Some(TaskFormat::JsonLines) => read_jsonl(bytes.as_slice(), input, check),
        Some(TaskFormat::Parquet) => read_parquet(bytes::Bytes::from(bytes), input, check),
        None => Err(InputError::UnsupportedFormat { input }),
    }
}

/// The tasks of a task file (see [`read_task_file`]), without the columns it passes through.
pub fn read_tasks(
    path: &Path,
    check: &dyn Fn(&Task) -> Result<(), FieldError>,
) -> Result<Vec<Task>, InputError> {
    read_task_file(path, check).map(|f| f.tasks)
}

/// Whether a column beyond the task schema may not be passed through: it has the name of a
/// result column (the output would hold two).
fn is_reserved(name: &str) -> bool {
    name == INPUT_INDEX || result_schema().fields().iter().any(|f| f.name() == name)
}

/// The task column a passed-through name is most likely a typo of (`budget` for `budget_usd`),
/// for a warning: a misspelt column is passed through, not used.
pub fn near_task_column(name: &str) -> Option<&'static str> {
    let within = if name.len() < 5 { 1 } else { 2 };
    TASK_COLUMNS
        .iter()
        .copied()
        .map(|c| (strsim::damerau_levenshtein(name, c), c))
        .filter(|(d, _)| *d <= within)
        .min()
        .map(|(_, c)| c)
        .or_else(|| {
            // A shortened name: `budget` for `budget_usd`, `max` for `max_turns`.
            (name.len() >= 3)
                .then(|| TASK_COLUMNS.iter().copied().find(|c| c.starts_with(name)))
                .flatten()
        })
}

enum TaskFormat {
    JsonLines,
    Parquet,
}

impl TaskFormat {
    fn of(path: &Path) -> Option<TaskFormat> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "jsonl" | "ndjson" | "json" => Some(TaskFormat::JsonLines),
            "parquet" => Some(TaskFormat::Parquet),
            _ => None,
        }
    }
}

/// The checks every task passes, whatever its format, before the caller's own check.
fn validate(task: &Task) -> Result<(), FieldError> {
    if task.id.is_empty() {
        return Err(FieldError::new("id", "must not be empty"));
    }
    if let Some(budget) = task.budget_usd {
        if !(budget.is_finite() && budget >= 0.0) {
            return Err(FieldError::new(
                "budget_usd",
                format!("must be a finite number >= 0, got {budget}"),
            ));
        }
    }
    if let Some(turns) = task.max_turns {
        if turns < 1 {
            return Err(FieldError::new(
                "max_turns",
                format!("must be at least 1, got {turns}"),
            ));
        }
    }
    if let Some(env) = &task.env {
        if !matches!(serde_json::from_str(env), Ok(serde_json::Value::Object(_))) {
            return Err(FieldError::new("env", "must be a JSON object"));
        }
    }
    if let Some(replay) = &task.replay {
        crate::executor::replay::parse_calls(replay).map_err(|e| FieldError::new("replay", e))?;
    }
    for (i, (key, weight)) in task.preference.iter().enumerate() {
        if !(weight.is_finite() && weight.abs() <= MAX_PREFERENCE_WEIGHT) {
            return Err(FieldError::new(
                format!("preference.{key}"),
                format!(
                    "must be a finite number in [-{MAX_PREFERENCE_WEIGHT}, \
                     {MAX_PREFERENCE_WEIGHT}], got {weight:?}"
                ),
            ));
        }
        if task.preference[..i].iter().any(|(k, _)| k == key) {
            return Err(FieldError::new(
                "preference",
                format!("duplicate key `{key}`"),
            ));
        }
    }
    Ok(())
}

/// A caller's check of one task (preference keys against a catalog, a size limit).
type TaskCheck<'a> = &'a dyn Fn(&Task) -> Result<(), FieldError>;

/// Runs the shared checks and remembers ids to catch duplicates.
struct Acceptor<'a> {
    input: String,
    /// `None` for rows validated when they were accepted (a job's stored task file): they are
    /// only decoded, with no check and no id kept.
    check: Option<TaskCheck<'a>>,
    first_seen: HashMap<String, Position>,
    /// Off where the caller checks ids itself (`jobs::TaskTable`, by hash).
    track_ids: bool,
}

impl<'a> Acceptor<'a> {
    fn new(input: String, check: Option<TaskCheck<'a>>) -> Acceptor<'a> {
        Acceptor {
            input,
            check,
            first_seen: HashMap::new(),
            track_ids: true,
        }
    }

    fn at(&self, position: Position) -> Location {
        Location {
            input: self.input.clone(),
            position,
        }
    }

    fn accept(&mut self, task: &Task, position: Position) -> Result<(), InputError> {
        let Some(check) = self.check else {
            return Ok(());
        };
        let field_error = |e: FieldError| InputError::Field {
            at: self.at(position),
            field: e.field,
            message: e.message,
        };
        validate(task).map_err(field_error)?;
        check(task).map_err(field_error)?;
        if !self.track_ids {
            return Ok(());
        }
        match self.first_seen.entry(task.id.clone()) {
            Entry::Occupied(first) => Err(InputError::DuplicateId {
                at: Location {
                    input: self.input.clone(),
                    position,
                },
                id: task.id.clone(),
                first: *first.get(),
            }),
            Entry::Vacant(slot) => {
                slot.insert(position);
                Ok(())
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JSON Lines

/// One line of a JSON Lines task file. Every field is optional here so that a missing `id` or
/// `prompt` gets its own message; nulls read as absent. Other keys are passed through to the
/// results (see [`LineKeys`]).
#[derive(Deserialize)]
struct TaskLine {
    id: Option<Id>,
    prompt: Option<String>,
    preference: Option<Preference>,
    budget_usd: Option<f64>,
    max_turns: Option<i32>,
    reference: Option<String>,
    /// Passed through: a string stays as it is, any other JSON value is kept as its JSON text.
    metadata: Option<serde_json::Value>,
    /// A JSON object, kept as its JSON text.
    env: Option<serde_json::Value>,
    user: Option<String>,
    /// A JSON array of calls, kept as its JSON text.
    replay: Option<serde_json::Value>,
}

/// A preference object, read in the order written (serde_json's map would sort the keys).
struct Preference(Vec<(String, f64)>);

impl<'de> Deserialize<'de> for Preference {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Preference, D::Error> {
        struct PreferenceVisitor;

        impl<'de> Visitor<'de> for PreferenceVisitor {
            type Value = Preference;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of alias (or `cost`, `latency`) to weight")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Preference, A::Error> {
                let mut weights = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(entry) = map.next_entry::<String, f64>()? {
                    weights.push(entry);
                }
                Ok(Preference(weights))
            }
        }

        deserializer.deserialize_map(PreferenceVisitor)
    }
}

/// The keys of one JSON Lines object in the order written, each with its value's JSON text.
struct LineKeys<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for LineKeys<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<LineKeys<'a>, D::Error> {
        struct KeysVisitor<'a>(std::marker::PhantomData<&'a ()>);

        impl<'de: 'a, 'a> Visitor<'de> for KeysVisitor<'a> {
            type Value = LineKeys<'a>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a task object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LineKeys<'a>, A::Error> {
                let mut keys = Vec::new();
                while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                    keys.push(entry);
                }
                Ok(LineKeys(keys))
            }
        }

        deserializer.deserialize_map(KeysVisitor(std::marker::PhantomData))
    }
}

/// A serde_json error's message without its position, which is in the value, not in the line.
fn json_problem(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rsplit_once(" at line ") {
        Some((message, _)) => message.to_string(),
        None => text,
    }
}

/// What the lines read so far made of the file: task lines, or OpenAI batch request lines (the
/// first line decides), and the endpoint the requests named.
#[derive(Default)]
struct LineMode {
    batch: Option<bool>,
    endpoint: Option<BatchEndpoint>,
}

fn read_jsonl(
    mut reader: impl BufRead,
    input: String,
    check: &dyn Fn(&Task) -> Result<(), FieldError>,
) -> Result<TaskFile, InputError> {
    let io_error = |source| InputError::Io {
        input: input.clone(),
        source,
    };
    let mut acceptor = Acceptor::new(input.clone(), Some(check));
    let mut mode = LineMode::default();
    let mut tasks = Vec::new();
    // The keys of each line beyond the task's, as a JSON object per task.
    let mut extras: Vec<serde_json::Value> = Vec::new();
    let mut any_extra = false;
    let mut buf = Vec::new();
    let mut line_no = 0;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).map_err(io_error)? == 0 {
            break;
        }
        line_no += 1;
        let Ok(mut line) = std::str::from_utf8(&buf) else {
            return Err(InputError::MalformedJson {
                at: acceptor.at(Position::Line {
                    line: line_no,
                    column: None,
                }),
                message: "the line is not valid UTF-8".into(),
            });
        };
        if line_no == 1 {
            line = line.strip_prefix('\u{feff}').unwrap_or(line);
        }
        if line.trim().is_empty() {
            continue;
        }
        let (task, extra) = parse_line(line, line_no, &acceptor, &mut mode)?;
        acceptor.accept(
            &task,
            Position::Line {
                line: line_no,
                column: None,
            },
        )?;
        tasks.push(task);
        any_extra |= !extra.is_empty();
        extras.push(serde_json::Value::Object(extra));
    }
    let extras = if any_extra {
        Some(extras_batch(&input, &extras)?)
    } else {
        None
    };
    Ok(TaskFile {
        tasks,
        extras,
        openai_batch: mode.endpoint,
    })
}

/// The extra keys of every line as columns, one row per task: types inferred by arrow-json as
/// pyarrow's `read_json` would (numbers, booleans, text, lists, structs; mixed scalars as text),
/// columns in the order their keys first appear.
fn extras_batch(input: &str, rows: &[serde_json::Value]) -> Result<RecordBatch, InputError> {
    let extra_error = |source| InputError::ExtraFields {
        input: input.to_string(),
        source,
    };
    let inferred = arrow::json::reader::infer_json_schema_from_iterator(rows.iter().map(Ok))
        .map_err(extra_error)?;
    let mut order: Vec<&str> = Vec::new();
    for row in rows {
        for key in row.as_object().into_iter().flat_map(|o| o.keys()) {
            if !order.contains(&key.as_str()) {
                order.push(key);
            }
        }
    }
    let fields: Vec<_> = order
        .iter()
        .filter_map(|name| inferred.field_with_name(name).ok().cloned())
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
        .with_coerce_primitive(true)
        .build_decoder()
        .map_err(extra_error)?;
    decoder.serialize(rows).map_err(extra_error)?;
    Ok(decoder
        .flush()
        .map_err(extra_error)?
        .unwrap_or_else(|| RecordBatch::new_empty(schema)))
}

/// Reads one line as `T` with serde, reporting the field and column of the first problem.
fn typed<T: de::DeserializeOwned>(
    line: &str,
    at_column: impl Fn(usize) -> Location,
) -> Result<T, InputError> {
    let mut de = serde_json::Deserializer::from_str(line);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    let row = match parsed {
        Ok(row) => row,
        Err(e) => {
            let field = e.path().to_string();
            return Err(json_error(field, e.into_inner(), at_column));
        }
    };
    // Trailing characters, such as a second object on the same line.
    de.end()
        .map_err(|e| json_error(String::new(), e, at_column))?;
    Ok(row)
}

/// One line as a task, with the keys beyond the task's.
fn parse_line(
    line: &str,
    line_no: usize,
    acceptor: &Acceptor,
    mode: &mut LineMode,
) -> Result<(Task, serde_json::Map<String, serde_json::Value>), InputError> {
    let at_column = |column| {
        acceptor.at(Position::Line {
            line: line_no,
            column: Some(column),
        })
    };
    let at_line = || {
        acceptor.at(Position::Line {
            line: line_no,
            column: None,
        })
    };
    let start = line.len() - line.trim_start().len();
    // Say plainly when a line holds valid JSON that is not an object: serde's "invalid type:
    // sequence" would not tell a user that each line must be one task.
    let found = match line.as_bytes()[start] {
        b'[' => Some("an array"),
        b'"' => Some("a string"),
        b'-' | b'0'..=b'9' => Some("a number"),
        b't' | b'f' => Some("a boolean"),
        b'n' => Some("null"),
        _ => None,
    };
    if let Some(found) = found {
        if serde_json::from_str::<de::IgnoredAny>(line).is_ok() {
            return Err(InputError::NotAnObject {
                at: at_column(start + 1),
                found,
            });
        }
    }
    let keys: LineKeys = typed_keys(line, at_column)?;

    let batch = *mode
        .batch
        .get_or_insert_with(|| keys.0.iter().any(|(k, _)| k == "custom_id"));
    if batch {
        let row: BatchLine = typed(line, at_column).map_err(|e| match e {
            InputError::UnknownField { at, field } => InputError::Field {
                at,
                message: "not a key of an OpenAI batch request (custom_id, method, url, body); \
                          the first line's `custom_id` made this file OpenAI batch input"
                    .into(),
                field,
            },
            other => other,
        })?;
        let (task, endpoint) =
            row.into_task(mode.endpoint)
                .map_err(|problem| InputError::Field {
                    at: at_line(),
                    field: problem.field,
                    message: problem.message,
                })?;
        mode.endpoint = Some(endpoint);
        return Ok((task, serde_json::Map::new()));
    }

    let row: TaskLine = typed(line, at_column)?;
    let mut extra = serde_json::Map::new();
    for (key, raw) in keys.0 {
        if TASK_COLUMNS.contains(&key.as_str()) {
            continue;
        }
        if is_reserved(&key) {
            return Err(InputError::ReservedField {
                at: at_line(),
                field: key,
            });
        }
        // The line was read with each value raw; a number too large for a double (`1e400`) is
        // valid JSON there and fails only here.
        let value = serde_json::from_str(raw.get()).map_err(|e| InputError::Field {
            at: at_line(),
            field: key.clone(),
            message: format!("cannot be passed through: {}", json_problem(&e)),
        })?;
        extra.insert(key, value);
    }
    let id = row
        .id
        .map(|id| id.0)
        .ok_or_else(|| InputError::MissingField {
            at: at_line(),
            field: "id",
        })?;
    let prompt = row.prompt.ok_or_else(|| InputError::MissingField {
        at: at_line(),
        field: "prompt",
    })?;
    let task = Task {
        id,
        prompt,
        preference: row.preference.map(|p| p.0).unwrap_or_default(),
        budget_usd: row.budget_usd,
        max_turns: row.max_turns,
        reference: row.reference,
        metadata: row.metadata.map(|m| match m {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        }),
        env: row.env.map(|v| v.to_string()),
        user: row.user,
        replay: row.replay.map(|v| v.to_string()),
    };
    Ok((task, extra))
}

/// The keys of a line (borrowing their values' text), reporting malformed JSON at its column.
fn typed_keys<'a>(
    line: &'a str,
    at_column: impl Fn(usize) -> Location,
) -> Result<LineKeys<'a>, InputError> {
    let mut de = serde_json::Deserializer::from_str(line);
    let keys =
        LineKeys::deserialize(&mut de).map_err(|e| json_error(String::new(), e, &at_column))?;
    de.end()
        .map_err(|e| json_error(String::new(), e, &at_column))?;
    Ok(keys)
}

fn json_error(
    field: String,
    e: serde_json::Error,
    at_column: impl Fn(usize) -> Location,
) -> InputError {
    let at = at_column(e.column());
    let message = serde_message(&e);
    if !e.is_data() {
        return InputError::MalformedJson { at, message };
    }
    // serde reports an unknown key as a data error naming it, in its own wording; give it ours,
    // which lists the accepted fields the same way as for Parquet columns.
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let field = rest.split('`').next().unwrap_or_default().to_string();
        return InputError::UnknownField { at, field };
    }
    InputError::Field { at, field, message }
}

/// serde_json's message without its " at line L column C" suffix: the caller reports the position
/// relative to the file.
fn serde_message(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    full.strip_suffix(&suffix).unwrap_or(&full).to_string()
}

/// The JSON Lines form of a task: absent optional fields are left out.
#[derive(Serialize)]
struct TaskLineOut<'a> {
    id: &'a str,
    prompt: &'a str,
    #[serde(
        skip_serializing_if = "<[_]>::is_empty",
        serialize_with = "serialize_preference"
    )]
    preference: &'a [(String, f64)],
    #[serde(skip_serializing_if = "Option::is_none")]
    budget_usd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_turns: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    env: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replay: Option<&'a RawValue>,
}

fn serialize_preference<S: Serializer>(
    weights: &&[(String, f64)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut map = serializer.serialize_map(Some(weights.len()))?;
    for (key, weight) in weights.iter() {
        map.serialize_entry(key, weight)?;
    }
    map.end()
}

/// JSON text written as it is (validated on input); text that is not JSON is left out.
fn raw_json(text: Option<&str>) -> Option<&RawValue> {
    text.and_then(|t| serde_json::from_str(t).ok())
}

/// Writes tasks as JSON Lines, one object per line, in the field names of the task schema.
pub fn write_tasks_jsonl(path: &Path, tasks: &[Task]) -> Result<(), InputError> {
    let input = path.display().to_string();
    let io_error = |source| InputError::Io {
        input: input.clone(),
        source,
    };
    let mut out = BufWriter::new(File::create(path).map_err(io_error)?);
    for task in tasks {
        let line = TaskLineOut {
            id: &task.id,
            prompt: &task.prompt,
            preference: &task.preference,
            budget_usd: task.budget_usd,
            max_turns: task.max_turns,
            reference: task.reference.as_deref(),
            metadata: task.metadata.as_deref(),
            env: raw_json(task.env.as_deref()),
            user: task.user.as_deref(),
            replay: raw_json(task.replay.as_deref()),
        };
        serde_json::to_writer(&mut out, &line).map_err(|e| io_error(e.into()))?;
        out.write_all(b"\n").map_err(io_error)?;
    }
    out.flush().map_err(io_error)
}

// ---------------------------------------------------------------------------------------------
// Arrow and Parquet

/// What a task column may hold on input: the schema's type or a losslessly castable one.
#[derive(Clone, Copy)]
enum ColumnKind {
    Text,
    /// Text, or an integer (read as its decimal text).
    Id,
    Float,
    Int,
    Preference,
}

impl ColumnKind {
    fn of(column: &str) -> ColumnKind {
        match column {
            "preference" => ColumnKind::Preference,
            "id" => ColumnKind::Id,
            "budget_usd" => ColumnKind::Float,
            "max_turns" => ColumnKind::Int,
            _ => ColumnKind::Text,
        }
    }

    fn expected(self) -> &'static str {
        match self {
            ColumnKind::Text => "utf8",
            ColumnKind::Id => "utf8 or an integer",
            ColumnKind::Float => "float64",
            ColumnKind::Int => "int32",
            ColumnKind::Preference => {
                "map<utf8, float64> or a struct of numbers (what pyarrow makes of a dict)"
            }
        }
    }

    fn accepts(self, data_type: &DataType) -> bool {
        use DataType::*;
        let is_int = |t: &DataType| {
            matches!(
                t,
                Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64
            )
        };
        let is_text = |t: &DataType| match t {
            Utf8 | LargeUtf8 | Utf8View => true,
            Dictionary(_, value) => matches!(**value, Utf8 | LargeUtf8 | Utf8View),
            _ => false,
        };
        if *data_type == Null {
            return true;
        }
        match self {
            ColumnKind::Text => is_text(data_type),
            ColumnKind::Id => is_text(data_type) || is_int(data_type),
            ColumnKind::Int => is_int(data_type),
            ColumnKind::Float => {
                is_int(data_type) || matches!(data_type, Float16 | Float32 | Float64)
            }
            ColumnKind::Preference => match data_type {
                Map(entries, _) => match entries.data_type() {
                    Struct(kv) if kv.len() == 2 => {
                        is_text(kv[0].data_type()) && ColumnKind::Float.accepts(kv[1].data_type())
                    }
                    _ => false,
                },
                Struct(fields) => fields
                    .iter()
                    .all(|f| ColumnKind::Float.accepts(f.data_type())),
                _ => false,
            },
        }
    }
}

/// Index of each task column (in [`TASK_COLUMNS`] order) in a batch's schema.
type ColumnIndex = [Option<usize>; TASK_COLUMNS.len()];

/// Checks a schema against the task schema: no repeated columns, `id` and `prompt` present,
/// every type castable to the task schema's. Other columns are an error unless `extras`, when
/// their indexes come back (their names must not be a result column's).
fn resolve_columns(
    input: &str,
    schema: &Schema,
    extras: bool,
) -> Result<(ColumnIndex, Vec<usize>), InputError> {
    let mut index: ColumnIndex = [None; TASK_COLUMNS.len()];
    let mut others = Vec::new();
    for (i, field) in schema.fields().iter().enumerate() {
        let name = field.name().as_str();
        if schema.fields()[..i].iter().any(|f| f.name() == name) {
            return Err(InputError::DuplicateColumn {
                input: input.into(),
                column: name.into(),
            });
        }
        let Some(slot) = TASK_COLUMNS.iter().position(|c| *c == name) else {
            if !extras {
                return Err(InputError::UnknownColumn {
                    input: input.into(),
                    column: name.into(),
                });
            }
            if is_reserved(name) {
                return Err(InputError::ReservedColumn {
                    input: input.into(),
                    column: name.into(),
                });
            }
            others.push(i);
            continue;
        };
        let kind = ColumnKind::of(name);
        if !kind.accepts(field.data_type()) {
            return Err(InputError::ColumnType {
                input: input.into(),
                column: TASK_COLUMNS[slot],
                expected: kind.expected(),
                found: type_name(field.data_type()),
            });
        }
        index[slot] = Some(i);
    }
    for required in ["id", "prompt"] {
        if index[column_slot(required)].is_none() {
            return Err(InputError::MissingColumn {
                input: input.into(),
                column: required,
            });
        }
    }
    Ok((index, others))
}

fn column_slot(name: &str) -> usize {
    TASK_COLUMNS
        .iter()
        .position(|c| *c == name)
        .expect("a task column")
}

/// Validates Arrow batches of tasks: a Parquet file's, or a Flight upload's. Row numbers and the
/// duplicate-id check run across all batches given to one decoder.
pub struct TaskBatchDecoder<'a> {
    acceptor: Acceptor<'a>,
    rows: usize,
    /// With [`with_extras`](TaskBatchDecoder::with_extras): the columns beyond the task schema
    /// of each batch decoded.
    extras: Option<Vec<RecordBatch>>,
}

impl<'a> TaskBatchDecoder<'a> {
    /// Checks `schema` (see [`task_schema`]) before any row is read. `input` names the source in
    /// error messages: a path, or a label such as `job 7`.
    pub fn new(
        input: impl Into<String>,
        schema: &Schema,
        check: &'a dyn Fn(&Task) -> Result<(), FieldError>,
    ) -> Result<TaskBatchDecoder<'a>, InputError> {
        TaskBatchDecoder::build(input.into(), schema, Some(check), false)
    }

    /// A decoder that keeps the columns beyond the task schema (for [`into_extras`]) where
    /// [`new`](TaskBatchDecoder::new) refuses them.
    ///
    /// [`into_extras`]: TaskBatchDecoder::into_extras
    pub(crate) fn with_extras(
        input: impl Into<String>,
        schema: &Schema,
        check: &'a dyn Fn(&Task) -> Result<(), FieldError>,
    ) -> Result<TaskBatchDecoder<'a>, InputError> {
        TaskBatchDecoder::build(input.into(), schema, Some(check), true)
    }

    /// A decoder of rows this server validated when it accepted them (a job's stored task
    /// file): they are only decoded, without the checks or the set of ids seen, so a job is
    /// validated once, at ingest.
    pub(crate) fn accepted(
        input: impl Into<String>,
        schema: &Schema,
    ) -> Result<TaskBatchDecoder<'static>, InputError> {
        TaskBatchDecoder::build(input.into(), schema, None, false)
    }

    fn build(
        input: String,
        schema: &Schema,
        check: Option<TaskCheck<'a>>,
        extras: bool,
    ) -> Result<TaskBatchDecoder<'a>, InputError> {
        resolve_columns(&input, schema, extras)?;
        Ok(TaskBatchDecoder {
            acceptor: Acceptor::new(input, check),
            rows: 0,
            extras: extras.then(Vec::new),
        })
    }

    /// The columns beyond the task schema of every batch decoded, one row per task; `None` when
    /// there were none (or the decoder refuses them).
    pub(crate) fn into_extras(self) -> Result<Option<RecordBatch>, InputError> {
        let Some(batches) = self
            .extras
            .filter(|b| b.first().is_some_and(|b| b.num_columns() > 0))
        else {
            return Ok(None);
        };
        arrow::compute::concat_batches(&batches[0].schema(), &batches)
            .map(Some)
            .map_err(|source| InputError::Arrow {
                input: self.acceptor.input,
                source,
            })
    }

    /// Leaves the duplicate-id check to the caller, which must make it: a table held in memory
    /// checks its ids by hash (`jobs::TaskTable`), in a fraction of the memory of a set of ids.
    pub(crate) fn without_id_set(mut self) -> Self {
        self.acceptor.track_ids = false;
        self
    }

    /// The columns beyond the task schema of each batch decoded, a batch each (zero-copy
    /// projections; zero columns when the input has none).
    pub(crate) fn into_extra_batches(self) -> Vec<RecordBatch> {
        self.extras.unwrap_or_default()
    }

    /// Validates and converts one batch. Its schema is checked again, as a stream may change it.
    pub fn decode(&mut self, batch: &RecordBatch) -> Result<Vec<Task>, InputError> {
        let input = &self.acceptor.input;
        let (index, others) = resolve_columns(input, &batch.schema(), self.extras.is_some())?;
        let column = |name: &'static str| index[column_slot(name)].map(|i| batch.column(i));
        let arrow_error = |source| InputError::Arrow {
            input: input.clone(),
            source,
        };

        let text = |name| -> Result<Option<StringArray>, InputError> {
            column(name)
                .map(|c| cast(c, &DataType::Utf8).map(|a| a.as_string::<i32>().clone()))
                .transpose()
                .map_err(arrow_error)
        };
        let ids = text("id")?.expect("resolve_columns requires id");
        let prompts = text("prompt")?.expect("resolve_columns requires prompt");
        let references = text("reference")?;
        let metadata = text("metadata")?;
        let envs = text("env")?;
        let users = text("user")?;
        let replays = text("replay")?;
        let budgets: Option<Float64Array> = column("budget_usd")
            .map(|c| cast(c, &DataType::Float64).map(|a| a.as_primitive::<Float64Type>().clone()))
            .transpose()
            .map_err(arrow_error)?;
        // Cast to int64 first (never out of range), so too large a value is reported at its row.
        let turns: Option<Int64Array> = column("max_turns")
            .map(|c| cast(c, &DataType::Int64).map(|a| a.as_primitive::<Int64Type>().clone()))
            .transpose()
            .map_err(arrow_error)?;
        let turns_source = column("max_turns");
        let preferences = match column("preference") {
            Some(c) if *c.data_type() != DataType::Null => {
                Some(PreferenceColumn::new(c).map_err(arrow_error)?)
            }
            _ => None,
        };

        let mut tasks = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            let position = Position::Row(self.rows + i + 1);
            let at = || self.acceptor.at(position);
            let opt_text = |a: &Option<StringArray>| {
                a.as_ref()
                    .filter(|a| a.is_valid(i))
                    .map(|a| a.value(i).to_string())
            };
            if ids.is_null(i) {
                return Err(InputError::NullField {
                    at: at(),
                    field: "id",
                });
            }
            if prompts.is_null(i) {
                return Err(InputError::NullField {
                    at: at(),
                    field: "prompt",
                });
            }
            let max_turns = match (&turns, turns_source) {
                (Some(t), _) if t.is_valid(i) => {
                    let value = t.value(i);
                    Some(i32::try_from(value).map_err(|_| InputError::Field {
                        at: at(),
                        field: "max_turns".into(),
                        message: format!("{value} does not fit in int32"),
                    })?)
                }
                (Some(_), Some(source)) if source.is_valid(i) => {
                    return Err(InputError::Field {
                        at: at(),
                        field: "max_turns".into(),
                        message: "value does not fit in int32".into(),
                    });
                }
                _ => None,
            };
            let preference = match &preferences {
                Some(p) => p.row(i).map_err(|e| InputError::Field {
                    at: at(),
                    field: e.field,
                    message: e.message,
                })?,
                None => Vec::new(),
            };
            let task = Task {
                id: ids.value(i).to_string(),
                prompt: prompts.value(i).to_string(),
                preference,
                budget_usd: budgets
                    .as_ref()
                    .filter(|b| b.is_valid(i))
                    .map(|b| b.value(i)),
                max_turns,
                reference: opt_text(&references),
                metadata: opt_text(&metadata),
                env: opt_text(&envs),
                user: opt_text(&users),
                replay: opt_text(&replays),
            };
            self.acceptor.accept(&task, position)?;
            tasks.push(task);
        }
        self.rows += batch.num_rows();
        if let Some(extras) = &mut self.extras {
            let projected = batch.project(&others).map_err(|source| InputError::Arrow {
                input: self.acceptor.input.clone(),
                source,
            })?;
            extras.push(projected);
        }
        Ok(tasks)
    }
}

/// A `preference` column with its weights cast to float64: a map (keys cast to utf8), or a struct
/// whose field names are the keys (pyarrow's reading of a list of dicts; a null field is a key
/// that row does not have).
enum PreferenceColumn {
    Map {
        map: Box<arrow::array::MapArray>,
        keys: StringArray,
        weights: Float64Array,
    },
    Struct {
        column: arrow::array::StructArray,
        weights: Vec<(String, Float64Array)>,
    },
}

impl PreferenceColumn {
    fn new(column: &ArrayRef) -> Result<PreferenceColumn, ArrowError> {
        if let Some(column) = column.as_struct_opt() {
            let weights = column
                .fields()
                .iter()
                .zip(column.columns())
                .map(|(field, values)| {
                    let values = cast(values, &DataType::Float64)?;
                    Ok((
                        field.name().clone(),
                        values.as_primitive::<Float64Type>().clone(),
                    ))
                })
                .collect::<Result<_, ArrowError>>()?;
            return Ok(PreferenceColumn::Struct {
                column: column.clone(),
                weights,
            });
        }
        let map = column.as_map().clone();
        let keys = cast(map.keys(), &DataType::Utf8)?
            .as_string::<i32>()
            .clone();
        let weights = cast(map.values(), &DataType::Float64)?
            .as_primitive::<Float64Type>()
            .clone();
        Ok(PreferenceColumn::Map {
            map: Box::new(map),
            keys,
            weights,
        })
    }

    fn row(&self, i: usize) -> Result<Vec<(String, f64)>, FieldError> {
        match self {
            PreferenceColumn::Struct { column, weights } => {
                if column.is_null(i) {
                    return Ok(Vec::new());
                }
                Ok(weights
                    .iter()
                    .filter(|(_, w)| w.is_valid(i))
                    .map(|(key, w)| (key.clone(), w.value(i)))
                    .collect())
            }
            PreferenceColumn::Map { map, keys, weights } => {
                if map.is_null(i) {
                    return Ok(Vec::new());
                }
                let offsets = map.value_offsets();
                let (start, end) = (offsets[i] as usize, offsets[i + 1] as usize);
                (start..end)
                    .map(|j| {
                        let key = keys.value(j).to_string();
                        if weights.is_null(j) {
                            return Err(FieldError::new(
                                format!("preference.{key}"),
                                "weight is null",
                            ));
                        }
                        Ok((key, weights.value(j)))
                    })
                    .collect()
            }
        }
    }
}

fn read_parquet(
    file: impl ChunkReader + 'static,
    input: String,
    check: &dyn Fn(&Task) -> Result<(), FieldError>,
) -> Result<TaskFile, InputError> {
    super::contain::contain(|| read_parquet_unguarded(file, input.clone(), check)).unwrap_or_else(
        |panic| {
            Err(InputError::Parquet {
                input,
                source: ParquetError::General(format!("the Parquet reader failed on it: {panic}")),
            })
        },
    )
}

fn read_parquet_unguarded(
    file: impl ChunkReader + 'static,
    input: String,
    check: &dyn Fn(&Task) -> Result<(), FieldError>,
) -> Result<TaskFile, InputError> {
    let parquet_error = |source| InputError::Parquet {
        input: input.clone(),
        source,
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_error)?;
    let rows = builder.metadata().file_metadata().num_rows();
    let mut decoder = TaskBatchDecoder::with_extras(input.clone(), builder.schema(), check)?;
    let reader = builder.build().map_err(parquet_error)?;
    let mut tasks = Vec::with_capacity(usize::try_from(rows).unwrap_or(0));
    for batch in reader {
        let batch = batch.map_err(|source| InputError::Arrow {
            input: input.clone(),
            source,
        })?;
        tasks.extend(decoder.decode(&batch)?);
    }
    Ok(TaskFile {
        tasks,
        extras: decoder.into_extras()?,
        openai_batch: None,
    })
}

/// Builds a batch of tasks in [`task_schema`]; an empty preference is written as null.
pub fn tasks_to_batch(tasks: &[Task]) -> RecordBatch {
    let n = tasks.len();
    let mut ids = StringBuilder::with_capacity(n, 0);
    let mut prompts = StringBuilder::with_capacity(n, 0);
    let mut preferences = MapBuilder::new(None, StringBuilder::new(), Float64Builder::new());
    let mut budgets = Float64Builder::with_capacity(n);
    let mut turns = Int32Builder::with_capacity(n);
    let mut references = StringBuilder::with_capacity(n, 0);
    let mut metadata = StringBuilder::with_capacity(n, 0);
    let mut envs = StringBuilder::with_capacity(n, 0);
    let mut users = StringBuilder::with_capacity(n, 0);
    let mut replays = StringBuilder::with_capacity(n, 0);
    for task in tasks {
        ids.append_value(&task.id);
        prompts.append_value(&task.prompt);
        for (key, weight) in &task.preference {
            preferences.keys().append_value(key);
            preferences.values().append_value(*weight);
        }
        preferences
            .append(!task.preference.is_empty())
            .expect("keys and values are balanced");
        budgets.append_option(task.budget_usd);
        turns.append_option(task.max_turns);
        references.append_option(task.reference.as_deref());
        metadata.append_option(task.metadata.as_deref());
        envs.append_option(task.env.as_deref());
        users.append_option(task.user.as_deref());
        replays.append_option(task.replay.as_deref());
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(ids.finish()),
        Arc::new(prompts.finish()),
        Arc::new(preferences.finish()),
        Arc::new(budgets.finish()),
        Arc::new(turns.finish()),
        Arc::new(references.finish()),
        Arc::new(metadata.finish()),
        Arc::new(envs.finish()),
        Arc::new(users.finish()),
        Arc::new(replays.finish()),
    ];
    RecordBatch::try_new(task_schema(), columns).expect("builders match the task schema")
}

/// Writes tasks as a Snappy-compressed Parquet file in [`task_schema`].
pub fn write_tasks_parquet(path: &Path, tasks: &[Task]) -> Result<(), InputError> {
    const ROWS_PER_BATCH: usize = 8192;
    let input = path.display().to_string();
    let parquet_error = |source| InputError::Parquet {
        input: input.clone(),
        source,
    };
    let file = File::create(path).map_err(|source| InputError::Io {
        input: input.clone(),
        source,
    })?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer =
        ArrowWriter::try_new(file, task_schema(), Some(props)).map_err(parquet_error)?;
    for chunk in tasks.chunks(ROWS_PER_BATCH) {
        writer
            .write(&tasks_to_batch(chunk))
            .map_err(parquet_error)?;
    }
    writer.close().map_err(parquet_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float32Array, Int64Array, LargeStringArray, StringViewArray, UInt8Array};
    use arrow::datatypes::Field;
    use std::path::PathBuf;
    use tempfile::TempDir;

    fn no_check(_: &Task) -> Result<(), FieldError> {
        Ok(())
    }

    fn file(name: &str, content: &str) -> (TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        fs_write(&path, content);
        (dir, path)
    }

    fn fs_write(path: &Path, content: &str) {
        std::fs::write(path, content).unwrap();
    }

    /// The error message for a JSON Lines file of these lines.
    fn jsonl_error(lines: &[&str]) -> String {
        let (_dir, path) = file("tasks.jsonl", &lines.join("\n"));
        read_tasks(&path, &no_check).unwrap_err().to_string()
    }

    fn assert_ends_with(message: &str, suffix: &str) {
        assert!(
            message.ends_with(suffix),
            "{message:?} does not end with {suffix:?}"
        );
    }

    fn sample_tasks() -> Vec<Task> {
        vec![
            Task {
                id: "t-1".into(),
                prompt: "What is 2+2?".into(),
                ..Task::default()
            },
            Task {
                id: "t-2".into(),
                prompt: "Solve x^2 = 2.\nShow work.".into(),
                preference: vec![("answer-math-2".into(), 0.7), ("cost".into(), -0.25)],
                budget_usd: Some(0.05),
                max_turns: Some(8),
                reference: Some("\\sqrt{2}".into()),
                metadata: Some(r#"{"source":"gsm8k"}"#.into()),
                env: Some(r#"{"task_id":"7"}"#.into()),
                user: Some("You want a refund.".into()),
                replay: Some(r#"[{"name":"done","arguments":{}}]"#.into()),
            },
            Task {
                id: "t-3 ünïcode".into(),
                prompt: "\"quoted\"".into(),
                preference: vec![("latency".into(), 1.0)],
                budget_usd: Some(0.0),
                max_turns: None,
                reference: None,
                metadata: Some(String::new()),
                ..Default::default()
            },
        ]
    }

    // --- JSON Lines ---

    #[test]
    fn jsonl_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.jsonl");
        write_tasks_jsonl(&path, &sample_tasks()).unwrap();
        assert_eq!(read_tasks(&path, &no_check).unwrap(), sample_tasks());
    }

    #[test]
    fn jsonl_accepts_ndjson_and_json_extensions_blank_lines_and_nulls() {
        let content =
            "\n{\"id\": \"a\", \"prompt\": \"p\", \"budget_usd\": null, \"preference\": null, \
                       \"max_turns\": null, \"reference\": null, \"metadata\": null}\r\n\n   \n";
        for name in ["tasks.ndjson", "tasks.JSON"] {
            let (_dir, path) = file(name, content);
            let tasks = read_tasks(&path, &no_check).unwrap();
            assert_eq!(
                tasks,
                vec![Task {
                    id: "a".into(),
                    prompt: "p".into(),
                    ..Task::default()
                }]
            );
        }
    }

    #[test]
    fn jsonl_keeps_non_string_metadata_as_json_text() {
        let (_dir, path) = file(
            "t.jsonl",
            r#"{"id": "a", "prompt": "p", "metadata": {"k": [1, 2]}}"#,
        );
        let tasks = read_tasks(&path, &no_check).unwrap();
        assert_eq!(tasks[0].metadata.as_deref(), Some(r#"{"k":[1,2]}"#));
    }

    #[test]
    fn jsonl_malformed_json_names_line_and_column() {
        let e = jsonl_error(&[
            r#"{"id": "a", "prompt": "p"}"#,
            "",
            r#"{"id": "b", "prompt": }"#,
        ]);
        assert!(
            e.contains("tasks.jsonl:3:23: malformed JSON: expected value"),
            "{e}"
        );
    }

    #[test]
    fn jsonl_trailing_characters_are_malformed() {
        let e = jsonl_error(&[r#"{"id": "a", "prompt": "p"} {"id": "b"}"#]);
        assert!(
            e.contains("tasks.jsonl:1:") && e.contains("malformed JSON: trailing"),
            "{e}"
        );
    }

    #[test]
    fn jsonl_wrong_type_names_the_field() {
        let e = jsonl_error(&[
            r#"{"id": "a", "prompt": "p"}"#,
            r#"{"id": "b", "prompt": "p", "budget_usd": "x"}"#,
        ]);
        assert_ends_with(
            &e,
            r#"tasks.jsonl:2:44: field `budget_usd`: invalid type: string "x", expected f64"#,
        );
        let e = jsonl_error(&[r#"{"id": "a", "prompt": "p", "max_turns": 2.5}"#]);
        assert!(
            e.contains("tasks.jsonl:1:") && e.contains("field `max_turns`: invalid type"),
            "{e}"
        );
        let e = jsonl_error(&[r#"{"id": 7.5, "prompt": "p"}"#]);
        assert!(
            e.contains("tasks.jsonl:1:")
                && e.contains("field `id`: invalid type: floating point `7.5`, expected a string or an integer"),
            "{e}"
        );
    }

    #[test]
    fn integer_ids_read_as_their_decimal_text() {
        let (_dir, path) = file(
            "tasks.jsonl",
            "{\"id\": 7, \"prompt\": \"p\"}\n{\"id\": \"8\", \"prompt\": \"p\"}\n",
        );
        let ids: Vec<String> = read_tasks(&path, &no_check)
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(ids, ["7", "8"]);
        let e = jsonl_error(&[
            r#"{"id": 7, "prompt": "p"}"#,
            r#"{"id": "7", "prompt": "p"}"#,
        ]);
        assert!(e.contains("duplicate id `7`"), "{e}");

        let (_dir, path) = parquet_file(&[batch(vec![
            ("id", Arc::new(Int64Array::from(vec![1, 20])) as ArrayRef),
            ("prompt", strings(&[Some("p"), Some("q")])),
        ])]);
        let ids: Vec<String> = read_tasks(&path, &no_check)
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(ids, ["1", "20"]);
    }

    #[test]
    fn a_struct_preference_reads_its_fields_as_keys_and_skips_nulls() {
        use arrow::array::StructArray;
        use arrow::datatypes::Field;
        let cost: ArrayRef = Arc::new(Float64Array::from(vec![Some(1.0), None]));
        let latency: ArrayRef = Arc::new(Int64Array::from(vec![None, Some(2)]));
        let preference = StructArray::from(vec![
            (Arc::new(Field::new("cost", DataType::Float64, true)), cost),
            (
                Arc::new(Field::new("latency", DataType::Int64, true)),
                latency,
            ),
        ]);
        let (_dir, path) = parquet_file(&[batch(vec![
            ("id", strings(&[Some("a"), Some("b")])),
            ("prompt", strings(&[Some("p"), Some("q")])),
            ("preference", Arc::new(preference) as ArrayRef),
        ])]);
        let tasks = read_tasks(&path, &no_check).unwrap();
        assert_eq!(tasks[0].preference, [("cost".to_string(), 1.0)]);
        assert_eq!(tasks[1].preference, [("latency".to_string(), 2.0)]);
    }

    #[test]
    fn jsonl_wrong_preference_weight_names_the_key() {
        let e = jsonl_error(&[r#"{"id": "a", "prompt": "p", "preference": {"cost": "high"}}"#]);
        assert!(
            e.contains("tasks.jsonl:1:") && e.contains("field `preference.cost`: invalid type")
        );
        let e = jsonl_error(&[r#"{"id": "a", "prompt": "p", "preference": [1]}"#]);
        assert!(e.contains("tasks.jsonl:1:") && e.contains("field `preference`: invalid type"));
    }

    #[test]
    fn jsonl_duplicate_preference_key_is_rejected() {
        let e =
            jsonl_error(&[r#"{"id": "a", "prompt": "p", "preference": {"cost": 1, "cost": 2}}"#]);
        assert_ends_with(
            &e,
            "tasks.jsonl:1: field `preference`: duplicate key `cost`",
        );
    }

    #[test]
    fn jsonl_extra_fields_pass_through_as_typed_columns() {
        let (_dir, path) = file(
            "tasks.jsonl",
            &[
                r#"{"id": "a", "prompt": "p", "category": "math", "score": 1}"#,
                "",
                r#"{"id": "b", "prompt": "p", "score": 2.5, "tags": ["x", "y"]}"#,
                r#"{"id": "c", "prompt": "p"}"#,
            ]
            .join("\n"),
        );
        let read = read_task_file(&path, &no_check).unwrap();
        assert_eq!(read.tasks.len(), 3);
        assert_eq!(read.extra_columns(), ["category", "score", "tags"]);
        let extras = read.extras.unwrap();
        assert_eq!(extras.num_rows(), 3);
        let category = extras.column(0).as_string::<i32>();
        assert_eq!(
            category.iter().collect::<Vec<_>>(),
            [Some("math"), None, None]
        );
        let score = extras.column(1).as_primitive::<Float64Type>();
        assert_eq!(
            score.iter().collect::<Vec<_>>(),
            [Some(1.0), Some(2.5), None]
        );
        assert!(matches!(extras.column(2).data_type(), DataType::List(_)));
        assert_eq!(read.openai_batch, None);
        // Without extra keys there is no extras batch.
        let (_dir, path) = file("t.jsonl", r#"{"id": "a", "prompt": "p"}"#);
        assert!(read_task_file(&path, &no_check).unwrap().extras.is_none());
    }

    #[test]
    fn an_extra_field_named_like_a_result_column_is_refused() {
        let e = jsonl_error(&["", r#"{"id": "a", "prompt": "p", "status": "new"}"#]);
        assert_ends_with(
            &e,
            "tasks.jsonl:2: field `status` has the name of a result column; fields beyond the \
             task's are passed through to the results, so rename it",
        );
        let e = jsonl_error(&[r#"{"id": "a", "prompt": "p", "input_index": 3}"#]);
        assert!(
            e.contains("field `input_index` has the name of a result column"),
            "{e}"
        );
        let e = parquet_error(&[batch(vec![
            ("id", strings(&[Some("a")])),
            ("prompt", strings(&[Some("p")])),
            ("answer", strings(&[Some("4")])),
        ])]);
        assert_ends_with(
            &e,
            "tasks.parquet: column `answer` has the name of a result column; columns beyond the \
             task's are passed through to the results, so rename it",
        );
    }

    #[test]
    fn a_misspelt_task_column_is_named_for_the_warning() {
        for (name, want) in [
            ("budget", Some("budget_usd")),
            ("max_turn", Some("max_turns")),
            ("prompts", Some("prompt")),
            ("refrence", Some("reference")),
            ("category", None),
            ("user_id", None),
            ("difficulty", None),
        ] {
            assert_eq!(near_task_column(name), want, "{name}");
        }
    }

    #[test]
    fn openai_batch_lines_are_read_as_tasks() {
        let (_dir, path) = file(
            "batch.jsonl",
            &[
                r#"{"custom_id": "r-1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "messages": [{"role": "user", "content": "What is 2+2?"}]}}"#,
                r#"{"custom_id": 2, "method": "POST", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "Name a prime."}]}}"#,
            ]
            .join("\n"),
        );
        let read = read_task_file(&path, &no_check).unwrap();
        assert_eq!(read.openai_batch, Some(BatchEndpoint::Chat));
        let got: Vec<(&str, &str)> = read
            .tasks
            .iter()
            .map(|t| (t.id.as_str(), t.prompt.as_str()))
            .collect();
        assert_eq!(got, [("r-1", "What is 2+2?"), ("2", "Name a prime.")]);
        assert!(read.extras.is_none());

        let first = r#"{"custom_id": "r-1", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "q"}]}}"#;
        let e = jsonl_error(&[
            first,
            r#"{"custom_id": "r-2", "url": "/v1/embeddings", "body": {"input": "q"}}"#,
        ]);
        assert_ends_with(
            &e,
            "tasks.jsonl:2: field `url`: `/v1/embeddings`: tutti runs /v1/chat/completions and \
             /v1/completions requests only",
        );
        let e = jsonl_error(&[first, r#"{"id": "t", "prompt": "p"}"#]);
        assert!(
            e.contains("tasks.jsonl:2:")
                && e.contains("field `id`: not a key of an OpenAI batch request"),
            "{e}"
        );
        let e = jsonl_error(&[first, first]);
        assert!(e.contains("duplicate id `r-1`"), "{e}");
    }

    #[test]
    fn jsonl_missing_or_empty_required_fields() {
        let e = jsonl_error(&[r#"{"id": "a", "prompt": "p"}"#, r#"{"prompt": "p"}"#]);
        assert_ends_with(&e, "tasks.jsonl:2: missing field `id`");
        let e = jsonl_error(&[r#"{"id": "a", "prompt": null}"#]);
        assert_ends_with(&e, "tasks.jsonl:1: missing field `prompt`");
        let e = jsonl_error(&[r#"{"id": "", "prompt": "p"}"#]);
        assert_ends_with(&e, "tasks.jsonl:1: field `id`: must not be empty");
    }

    #[test]
    fn jsonl_line_that_is_not_an_object() {
        let e = jsonl_error(&[r#"{"id": "a", "prompt": "p"}"#, r#"  [{"id": "b"}]"#]);
        assert_ends_with(
            &e,
            "tasks.jsonl:2:3: expected a task object (one JSON object per line), found an array",
        );
        let e = jsonl_error(&["42"]);
        assert!(
            e.contains("tasks.jsonl:1:1:") && e.ends_with("found a number"),
            "{e}"
        );
    }

    #[test]
    fn jsonl_duplicate_id_names_both_lines() {
        let e = jsonl_error(&[
            r#"{"id": "t-1", "prompt": "p"}"#,
            r#"{"id": "t-3", "prompt": "p"}"#,
            "",
            r#"{"id": "t-3", "prompt": "q"}"#,
        ]);
        assert_ends_with(
            &e,
            "tasks.jsonl:4: duplicate id `t-3` (first seen on line 2)",
        );
    }

    #[test]
    fn jsonl_out_of_range_values_are_field_errors() {
        let e = jsonl_error(&[r#"{"id": "a", "prompt": "p", "max_turns": 0}"#]);
        assert_ends_with(
            &e,
            "tasks.jsonl:1: field `max_turns`: must be at least 1, got 0",
        );
        let e = jsonl_error(&[r#"{"id": "a", "prompt": "p", "budget_usd": -0.5}"#]);
        assert_ends_with(
            &e,
            "tasks.jsonl:1: field `budget_usd`: must be a finite number >= 0, got -0.5",
        );
        let e = jsonl_error(&[r#"{"id": "a", "prompt": "p", "max_turns": 3000000000}"#]);
        assert!(
            e.contains("tasks.jsonl:1:") && e.contains("field `max_turns`: invalid value"),
            "{e}"
        );
    }

    #[test]
    fn jsonl_extra_number_out_of_range_is_a_field_error() {
        // Found by the `tasks_jsonl` fuzz target: this panicked (fuzz/regressions/tasks_jsonl/).
        let e = jsonl_error(&[r#"{"id": "a", "prompt": "p", "big": 1e400}"#]);
        assert_ends_with(
            &e,
            "tasks.jsonl:1: field `big`: cannot be passed through: number out of range",
        );
    }

    #[test]
    fn caller_check_failures_name_line_and_field() {
        let check = |t: &Task| match t.preference.iter().find(|(k, _)| k == "answer-9") {
            Some((k, _)) => Err(FieldError::new(
                format!("preference.{k}"),
                "not an alias of the catalog",
            )),
            None => Ok(()),
        };
        let (_dir, path) = file(
            "tasks.jsonl",
            "{\"id\": \"a\", \"prompt\": \"p\"}\n{\"id\": \"b\", \"prompt\": \"p\", \"preference\": {\"answer-9\": 1}}",
        );
        let e = read_tasks(&path, &check).unwrap_err();
        assert_eq!(
            e.location().unwrap().position,
            Position::Line {
                line: 2,
                column: None
            }
        );
        assert_ends_with(
            &e.to_string(),
            "tasks.jsonl:2: field `preference.answer-9`: not an alias of the catalog",
        );
    }

    #[test]
    fn unsupported_extension_names_path_and_accepted_formats() {
        let (_dir, path) = file("tasks.csv", "id,prompt\n");
        let e = read_tasks(&path, &no_check).unwrap_err().to_string();
        assert!(
            e.contains("tasks.csv") && e.contains(".jsonl") && e.contains(".parquet"),
            "{e}"
        );
    }

    #[test]
    fn missing_file_names_the_path() {
        let e = read_tasks(Path::new("/nonexistent/tasks.jsonl"), &no_check).unwrap_err();
        assert!(
            e.to_string().starts_with("/nonexistent/tasks.jsonl: "),
            "{e}"
        );
    }

    // --- Parquet ---

    fn parquet_file(batches: &[RecordBatch]) -> (TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.parquet");
        let mut writer =
            ArrowWriter::try_new(File::create(&path).unwrap(), batches[0].schema(), None).unwrap();
        for batch in batches {
            writer.write(batch).unwrap();
        }
        writer.close().unwrap();
        (dir, path)
    }

    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(columns).unwrap()
    }

    fn strings(values: &[Option<&str>]) -> ArrayRef {
        Arc::new(values.iter().copied().collect::<StringArray>())
    }

    fn parquet_error(batches: &[RecordBatch]) -> String {
        let (_dir, path) = parquet_file(batches);
        read_tasks(&path, &no_check).unwrap_err().to_string()
    }

    /// `n` rows with ids `t-0`.. and prompts `p`; `edit` may change an id.
    fn many(n: usize, edit: impl Fn(usize) -> Option<Option<String>>) -> RecordBatch {
        let ids: StringArray = (0..n)
            .map(|i| edit(i).unwrap_or_else(|| Some(format!("t-{i}"))))
            .collect();
        batch(vec![
            ("id", Arc::new(ids) as ArrayRef),
            (
                "prompt",
                Arc::new(StringArray::from_iter_values((0..n).map(|_| "p"))),
            ),
        ])
    }

    #[test]
    fn parquet_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.parquet");
        write_tasks_parquet(&path, &sample_tasks()).unwrap();
        assert_eq!(read_tasks(&path, &no_check).unwrap(), sample_tasks());
    }

    #[test]
    fn parquet_accepts_castable_types() {
        let b = batch(vec![
            (
                "prompt",
                Arc::new(StringViewArray::from(vec!["p1", "p2"])) as ArrayRef,
            ),
            ("id", Arc::new(LargeStringArray::from(vec!["a", "b"]))),
            (
                "budget_usd",
                Arc::new(Float32Array::from(vec![Some(0.5), None])),
            ),
            ("max_turns", Arc::new(UInt8Array::from(vec![None, Some(4)]))),
        ]);
        let (_dir, path) = parquet_file(&[b]);
        let tasks = read_tasks(&path, &no_check).unwrap();
        assert_eq!(
            tasks,
            vec![
                Task {
                    id: "a".into(),
                    prompt: "p1".into(),
                    budget_usd: Some(0.5),
                    ..Task::default()
                },
                Task {
                    id: "b".into(),
                    prompt: "p2".into(),
                    max_turns: Some(4),
                    ..Task::default()
                },
            ]
        );
        let b = batch(vec![
            ("id", strings(&[Some("a")])),
            ("prompt", strings(&[Some("p")])),
            ("budget_usd", Arc::new(Int64Array::from(vec![2]))),
            ("max_turns", Arc::new(Int64Array::from(vec![9]))),
        ]);
        let (_dir, path) = parquet_file(&[b]);
        let tasks = read_tasks(&path, &no_check).unwrap();
        assert_eq!(
            (tasks[0].budget_usd, tasks[0].max_turns),
            (Some(2.0), Some(9))
        );
    }

    #[test]
    fn parquet_extra_columns_pass_through_across_batches() {
        let part = |ids: &[Option<&str>], n: i64| {
            batch(vec![
                ("id", strings(ids)),
                ("category", strings(&[Some("math"); 2][..ids.len()])),
                ("prompt", strings(&[Some("p"); 2][..ids.len()])),
                (
                    "n",
                    Arc::new(Int64Array::from(vec![n; ids.len()])) as ArrayRef,
                ),
            ])
        };
        let (_dir, path) = parquet_file(&[part(&[Some("a"), Some("b")], 1), part(&[Some("c")], 2)]);
        let read = read_task_file(&path, &no_check).unwrap();
        assert_eq!(read.tasks.len(), 3);
        assert_eq!(read.extra_columns(), ["category", "n"]);
        let extras = read.extras.unwrap();
        let n = extras.column(1).as_primitive::<Int64Type>();
        assert_eq!(n.values().to_vec(), [1, 1, 2]);
    }

    #[test]
    fn a_flight_upload_still_refuses_unknown_columns() {
        let schema = batch(vec![
            ("id", strings(&[Some("a")])),
            ("prompt", strings(&[Some("p")])),
            ("temperature", Arc::new(Float32Array::from(vec![0.1]))),
        ])
        .schema();
        let e = TaskBatchDecoder::new("job 7", &schema, &no_check)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            e,
            "job 7: unknown column `temperature`; accepted columns: id, prompt, preference, \
             budget_usd, max_turns, reference, metadata, env, user, replay"
        );
    }

    #[test]
    fn parquet_wrong_type_names_column_expected_and_found() {
        let e = parquet_error(&[batch(vec![
            ("id", strings(&[Some("a")])),
            ("prompt", strings(&[Some("p")])),
            ("budget_usd", strings(&[Some("x")])),
        ])]);
        assert_ends_with(
            &e,
            "tasks.parquet: column `budget_usd`: expected float64, found utf8",
        );
        let e = parquet_error(&[batch(vec![
            ("id", strings(&[Some("a")])),
            ("prompt", strings(&[Some("p")])),
            ("max_turns", Arc::new(Float64Array::from(vec![3.0]))),
        ])]);
        assert_ends_with(
            &e,
            "tasks.parquet: column `max_turns`: expected int32, found float64",
        );
        let e = parquet_error(&[batch(vec![
            ("id", Arc::new(Float64Array::from(vec![1.0])) as ArrayRef),
            ("prompt", strings(&[Some("p")])),
        ])]);
        assert_ends_with(
            &e,
            "tasks.parquet: column `id`: expected utf8 or an integer, found float64",
        );
    }

    #[test]
    fn parquet_missing_required_column() {
        let e = parquet_error(&[batch(vec![("prompt", strings(&[Some("p")]))])]);
        assert_ends_with(&e, "tasks.parquet: missing required column `id`");
        let e = parquet_error(&[batch(vec![("id", strings(&[Some("a")]))])]);
        assert_ends_with(&e, "tasks.parquet: missing required column `prompt`");
    }

    #[test]
    fn parquet_null_id_names_the_row_across_batches() {
        // 2500 rows are read as several batches of 1024.
        let e = parquet_error(&[many(2500, |i| (i == 2099).then_some(None))]);
        assert_ends_with(&e, "tasks.parquet: row 2100: field `id` is null");
        let e = parquet_error(&[many(3, |_| None), many(2, |_| None)]);
        assert!(
            e.contains("row 4: duplicate id `t-0` (first seen on row 1)"),
            "{e}"
        );
    }

    #[test]
    fn parquet_null_prompt_names_the_row() {
        let e = parquet_error(&[batch(vec![
            ("id", strings(&[Some("a"), Some("b")])),
            ("prompt", strings(&[Some("p"), None])),
        ])]);
        assert_ends_with(&e, "tasks.parquet: row 2: field `prompt` is null");
    }

    #[test]
    fn parquet_duplicate_id_names_both_rows() {
        let e = parquet_error(&[many(2000, |i| (i == 1499).then(|| Some("t-2".to_string())))]);
        assert_ends_with(
            &e,
            "tasks.parquet: row 1500: duplicate id `t-2` (first seen on row 3)",
        );
    }

    #[test]
    fn parquet_field_errors_name_the_row() {
        let e = parquet_error(&[batch(vec![
            ("id", strings(&[Some("a"), Some("b")])),
            ("prompt", strings(&[Some("p"), Some("p")])),
            (
                "budget_usd",
                Arc::new(Float64Array::from(vec![1.0, f64::NAN])),
            ),
        ])]);
        assert_ends_with(
            &e,
            "tasks.parquet: row 2: field `budget_usd`: must be a finite number >= 0, got NaN",
        );
        let e = parquet_error(&[batch(vec![
            ("id", strings(&[Some("a"), Some("")])),
            ("prompt", strings(&[Some("p"), Some("p")])),
        ])]);
        assert_ends_with(&e, "tasks.parquet: row 2: field `id`: must not be empty");
        let e = parquet_error(&[batch(vec![
            ("id", strings(&[Some("a"), Some("b")])),
            ("prompt", strings(&[Some("p"), Some("p")])),
            (
                "max_turns",
                Arc::new(Int64Array::from(vec![1, 3_000_000_000])),
            ),
        ])]);
        assert_ends_with(
            &e,
            "tasks.parquet: row 2: field `max_turns`: 3000000000 does not fit in int32",
        );
    }

    #[test]
    fn parquet_null_preference_weight_names_the_key() {
        let mut prefs = MapBuilder::new(None, StringBuilder::new(), Float64Builder::new());
        prefs.keys().append_value("cost");
        prefs.values().append_null();
        prefs.append(true).unwrap();
        let e = parquet_error(&[batch(vec![
            ("id", strings(&[Some("a")])),
            ("prompt", strings(&[Some("p")])),
            ("preference", Arc::new(prefs.finish())),
        ])]);
        assert_ends_with(
            &e,
            "tasks.parquet: row 1: field `preference.cost`: weight is null",
        );
    }

    #[test]
    fn parquet_caller_check_names_the_row() {
        let (_dir, path) = parquet_file(&[many(5, |_| None)]);
        let check = |t: &Task| {
            if t.id == "t-3" {
                Err(FieldError::new("prompt", "too long"))
            } else {
                Ok(())
            }
        };
        let e = read_tasks(&path, &check).unwrap_err().to_string();
        assert_ends_with(&e, "tasks.parquet: row 4: field `prompt`: too long");
    }

    #[test]
    fn decoder_labels_errors_with_its_input_and_checks_the_schema_first() {
        let schema = Schema::new(vec![Field::new("prompt", DataType::Utf8, false)]);
        let e = TaskBatchDecoder::new("job 7", &schema, &no_check)
            .err()
            .unwrap();
        assert_eq!(e.to_string(), "job 7: missing required column `id`");

        let mut decoder = TaskBatchDecoder::new("job 7", &task_schema(), &no_check).unwrap();
        let tasks = sample_tasks();
        assert_eq!(decoder.decode(&tasks_to_batch(&tasks)).unwrap(), tasks);
        let e = decoder.decode(&tasks_to_batch(&tasks[1..])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "job 7: row 4: duplicate id `t-2` (first seen on row 2)"
        );
    }

    #[test]
    fn an_accepted_task_file_is_decoded_without_checking_it_again() {
        let refuse_all = |_: &Task| Err(FieldError::new("preference", "refused"));
        let tasks = sample_tasks();
        let batch = tasks_to_batch(&tasks);
        let mut checked = TaskBatchDecoder::new("job 7", &task_schema(), &refuse_all).unwrap();
        assert!(checked.decode(&batch).is_err());
        // Rows accepted at ingest: no check, and no ids kept across batches.
        let mut accepted = TaskBatchDecoder::accepted("job 7", &task_schema()).unwrap();
        assert_eq!(accepted.decode(&batch).unwrap(), tasks);
        assert_eq!(accepted.decode(&batch).unwrap(), tasks);
        // The schema is still checked: a file that is not a task file is refused.
        let other = Schema::new(vec![Field::new("prompt", DataType::Utf8, false)]);
        assert!(TaskBatchDecoder::accepted("job 7", &other).is_err());
    }

    #[test]
    fn tasks_batch_has_the_task_schema() {
        assert_eq!(tasks_to_batch(&sample_tasks()).schema(), task_schema());
    }
}
