//! The Arrow schemas of tasks in and results out, defined once and shared by the readers, the
//! writers, the Flight service and the tests (DESIGN.md, "Arrow schemas").

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use serde::de::{self, Deserialize, Deserializer, Visitor};
use std::fmt;

/// Columns of a task table, in schema order. Only `id` and `prompt` are required.
pub(crate) const TASK_COLUMNS: [&str; 10] = [
    "id",
    "prompt",
    "preference",
    "budget_usd",
    "max_turns",
    "reference",
    "metadata",
    "env",
    "user",
    "replay",
];

/// The column of `tutti run`'s output that gives each row's task its 0-based row in the input
/// (null for a row whose id the input no longer has).
pub(crate) const INPUT_INDEX: &str = "input_index";

static TASK_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("prompt", DataType::Utf8, false),
        Field::new_map(
            "preference",
            Field::MAP_ENTRIES_FIELD_DEFAULT_NAME,
            Field::new(Field::MAP_KEY_FIELD_DEFAULT_NAME, DataType::Utf8, false),
            Field::new(Field::MAP_VALUE_FIELD_DEFAULT_NAME, DataType::Float64, true),
            false,
            true,
        ),
        Field::new("budget_usd", DataType::Float64, true),
        Field::new("max_turns", DataType::Int32, true),
        Field::new("reference", DataType::Utf8, true),
        Field::new("metadata", DataType::Utf8, true),
        Field::new("env", DataType::Utf8, true),
        Field::new("user", DataType::Utf8, true),
        Field::new("replay", DataType::Utf8, true),
    ]))
});

/// The fields of one entry of the results' `calls` column.
static CALL_FIELDS: LazyLock<Fields> = LazyLock::new(|| {
    Fields::from(vec![
        Field::new("tool", DataType::Utf8, false),
        Field::new("alias", DataType::Utf8, false),
        Field::new("backend", DataType::Utf8, false),
        Field::new("cached", DataType::Boolean, false),
        Field::new("input_tokens", DataType::Int64, false),
        Field::new("output_tokens", DataType::Int64, false),
        Field::new("cost_usd", DataType::Float64, false),
        Field::new("latency_ms", DataType::Int64, false),
    ])
});

/// The fields of one entry of the results' `trajectory` column: a message of the episode's context.
static MESSAGE_FIELDS: LazyLock<Fields> = LazyLock::new(|| {
    Fields::from(vec![
        Field::new("role", DataType::Utf8, false),
        Field::new("content", DataType::Utf8, false),
        Field::new("tokens", DataType::Int64, false),
    ])
});

static RESULT_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("answer", DataType::Utf8, true),
        Field::new("correct", DataType::Boolean, true),
        Field::new("turns", DataType::Int32, false),
        Field::new("cost_usd", DataType::Float64, false),
        Field::new("latency_ms", DataType::Int64, false),
        Field::new("orchestrator_tokens", DataType::Int64, false),
        Field::new_list("calls", call_item_field(), false),
        Field::new_list("trajectory", message_item_field(), true),
        Field::new("error", DataType::Utf8, true),
        Field::new("metadata", DataType::Utf8, true),
        Field::new("reward", DataType::Float64, true),
        Field::new("reward_info", DataType::Utf8, true),
        // Null in files written before the column existed: read as the task's cost less its calls'.
        Field::new("orchestrator_cost_usd", DataType::Float64, true),
    ]))
});

/// The schema of a task table: `id` and `prompt` (utf8, required), `preference`
/// (map<utf8, float64>), `budget_usd` (float64), `max_turns` (int32), `reference`, `metadata`,
/// `env` (a JSON object), `user` and `replay` (a JSON array) (utf8). Readers accept losslessly castable variants of these types; writers produce exactly this.
pub fn task_schema() -> SchemaRef {
    TASK_SCHEMA.clone()
}

/// The schema of the result table, one row per task.
pub fn result_schema() -> SchemaRef {
    RESULT_SCHEMA.clone()
}

/// The struct fields of one `calls` entry of a result row.
pub(crate) fn call_fields() -> Fields {
    CALL_FIELDS.clone()
}

/// The item field of the results' `calls` list: a non-null struct per backend call.
pub(crate) fn call_item_field() -> Field {
    Field::new_list_field(DataType::Struct(CALL_FIELDS.clone()), false)
}

/// The struct fields of one `trajectory` entry of a result row: `role` (`user`, `assistant`,
/// `tool`), `content`, and `tokens`, what the message costs the orchestrator's context.
pub(crate) fn message_fields() -> Fields {
    MESSAGE_FIELDS.clone()
}

/// The item field of the results' `trajectory` list: a non-null struct per message.
pub(crate) fn message_item_field() -> Field {
    Field::new_list_field(DataType::Struct(MESSAGE_FIELDS.clone()), false)
}

/// A short lower-case name of an Arrow type for error messages, in the words DESIGN.md uses
/// (`utf8`, `float64`, `map<utf8, float64>`).
pub(crate) fn type_name(data_type: &DataType) -> String {
    match data_type {
        DataType::Null => "null".into(),
        DataType::Boolean => "bool".into(),
        DataType::Int8 => "int8".into(),
        DataType::Int16 => "int16".into(),
        DataType::Int32 => "int32".into(),
        DataType::Int64 => "int64".into(),
        DataType::UInt8 => "uint8".into(),
        DataType::UInt16 => "uint16".into(),
        DataType::UInt32 => "uint32".into(),
        DataType::UInt64 => "uint64".into(),
        DataType::Float16 => "float16".into(),
        DataType::Float32 => "float32".into(),
        DataType::Float64 => "float64".into(),
        DataType::Utf8 => "utf8".into(),
        DataType::LargeUtf8 => "large_utf8".into(),
        DataType::Utf8View => "utf8_view".into(),
        DataType::Binary => "binary".into(),
        DataType::LargeBinary => "large_binary".into(),
        DataType::Dictionary(_, value) => format!("dictionary<{}>", type_name(value)),
        DataType::List(item) | DataType::LargeList(item) | DataType::ListView(item) => {
            format!("list<{}>", type_name(item.data_type()))
        }
        DataType::Struct(fields) => {
            let inner: Vec<String> = fields
                .iter()
                .map(|f| format!("{}: {}", f.name(), type_name(f.data_type())))
                .collect();
            format!("struct<{}>", inner.join(", "))
        }
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(kv) if kv.len() == 2 => format!(
                "map<{}, {}>",
                type_name(kv[0].data_type()),
                type_name(kv[1].data_type())
            ),
            other => format!("map<{}>", type_name(other)),
        },
        other => other.to_string().to_lowercase(),
    }
}

/// A task id: a string, or an integer read as its decimal text (ids numbered by a script).
pub(super) struct Id(pub(super) String);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Id, D::Error> {
        struct IdVisitor;

        impl Visitor<'_> for IdVisitor {
            type Value = Id;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an integer")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Id, E> {
                Ok(Id(v.to_string()))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Id, E> {
                Ok(Id(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Id, E> {
                Ok(Id(v.to_string()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Id, E> {
                Ok(Id(v.to_string()))
            }
        }

        deserializer.deserialize_any(IdVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_columns_match_the_task_schema() {
        let schema = task_schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, TASK_COLUMNS);
    }

    #[test]
    fn schemas_are_built_once() {
        assert!(Arc::ptr_eq(&task_schema(), &task_schema()));
        assert!(Arc::ptr_eq(&result_schema(), &result_schema()));
    }

    #[test]
    fn result_calls_is_a_list_of_call_structs() {
        let schema = result_schema();
        let calls = schema.field_with_name("calls").unwrap();
        match calls.data_type() {
            DataType::List(item) => {
                assert_eq!(item.data_type(), &DataType::Struct(call_fields()));
            }
            other => panic!("calls is {other}"),
        }
    }
}
