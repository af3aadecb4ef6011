//! The orchestrator's `search` tool: BM25 over a local corpus.
//!
//! The chosen model writes a free-text query; [`RetrievalIndex::search`] answers it with the top
//! passages of a tantivy index and [`RetrievalIndex::render`] turns them into the observation the
//! orchestrator sees. The index is built once from a JSON Lines corpus
//! ([`RetrievalIndex::build`]; `examples/corpus/python-stdlib.jsonl` is the shipped one) and is
//! read-only afterwards, so one [`IndexReader`] serves every query without reloading.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Deserialize;
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, BoostQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, Value, STORED, STRING,
};
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer,
    TokenStream,
};
use tantivy::{doc, Index, IndexReader, ReloadPolicy, TantivyDocument, TantivyError, Term};

/// How much more a query term counts in a title than in the text: a title names the document
/// (`json.dumps`), so a hit there is stronger evidence than a mention in passing.
const TITLE_BOOST: f32 = 1.5;

/// The indexer's memory budget, split among its threads (tantivy wants at least 15 MB each).
const WRITER_MEMORY_BYTES: usize = 100_000_000;

/// The name under which [`analyzer`] is registered with each index, at build and at open.
const TOKENIZER: &str = "retrieval_en";

/// Appended to a passage's text when it is cut to `max_chars`.
const ELLIPSIS: char = '…';

/// One search hit: a corpus document, its text possibly cut, and its BM25 score.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Passage {
    pub id: String,
    pub title: String,
    pub text: String,
    pub score: f32,
}

/// What [`RetrievalIndex::build`] did: how many documents it indexed and how long it took.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BuildStats {
    pub documents: u64,
    /// Wall time of the whole build: reading, parsing, indexing and committing.
    pub seconds: f64,
}

impl BuildStats {
    /// Indexing throughput in documents per second.
    pub fn docs_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.documents as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Why building, opening or searching an index failed. Each message names the file and line
/// (corpus input) or the index directory it is about.
#[derive(Debug, thiserror::Error)]
pub enum RetrievalError {
    #[error("cannot read corpus {path}: {source}")]
    ReadCorpus { path: PathBuf, source: io::Error },
    /// A corpus line is not a JSON object with string fields `id`, `text` and optional `title`.
    /// `reason` is serde_json's, which names the missing, unknown or mistyped field.
    #[error("corpus {path}, line {line}, column {column}: {reason} (expected an object with string fields `id`, `text` and optional `title`)")]
    BadRecord {
        path: PathBuf,
        line: u64,
        column: usize,
        reason: String,
    },
    #[error("corpus {path}, line {line}: field `{field}` is empty (expected non-blank text)")]
    EmptyField {
        path: PathBuf,
        line: u64,
        field: &'static str,
    },
    #[error("corpus {path}, line {line}: field `id` is {id:?}, already used on line {first_line} (expected unique ids)")]
    DuplicateId {
        path: PathBuf,
        line: u64,
        id: String,
        first_line: u64,
    },
    #[error("index directory {dir} exists and is not empty (expected a new or empty directory)")]
    DirNotEmpty { dir: PathBuf },
    #[error("cannot create index directory {dir}: {source}")]
    CreateDir { dir: PathBuf, source: io::Error },
    #[error("cannot write index {dir}: {source}")]
    Write { dir: PathBuf, source: TantivyError },
    #[error("cannot open index {dir}: {source}")]
    Open { dir: PathBuf, source: TantivyError },
    #[error(
        "index {dir} has no text field `{field}` (expected an index made by RetrievalIndex::build)"
    )]
    MissingField { dir: PathBuf, field: &'static str },
    #[error("search in index {dir} failed: {source}")]
    Search { dir: PathBuf, source: TantivyError },
}

/// One corpus line. Unknown fields are rejected so that a typo (`txt`) is an error, not a
/// document with its text silently missing.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CorpusRecord {
    id: String,
    /// Defaults to the id.
    #[serde(default)]
    title: String,
    text: String,
}

/// The index's schema, defined once and shared by `build` and `open`.
#[derive(Clone, Copy)]
struct Fields {
    /// Stored verbatim, not searched: the document's name in results.
    id: Field,
    title: Field,
    text: Field,
}

impl Fields {
    fn schema() -> (Schema, Fields) {
        let searched = TextOptions::default().set_stored().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(TOKENIZER)
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        );
        let mut builder = Schema::builder();
        let fields = Fields {
            id: builder.add_text_field("id", STRING | STORED),
            title: builder.add_text_field("title", searched.clone()),
            text: builder.add_text_field("text", searched),
        };
        (builder.build(), fields)
    }

    fn of(schema: &Schema, dir: &Path) -> Result<Fields, RetrievalError> {
        let get = |field: &'static str| {
            schema
                .get_field(field)
                .map_err(|_| RetrievalError::MissingField {
                    dir: dir.to_owned(),
                    field,
                })
        };
        Ok(Fields {
            id: get("id")?,
            title: get("title")?,
            text: get("text")?,
        })
    }
}

/// How titles, texts and queries are cut into terms: words, lowercased, without English stop
/// words (in a question like "how do I split a path into its parts" they would only add noise to
/// BM25), stemmed so that "serialize" finds "serializes".
fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .filter(StopWordFilter::new(Language::English).expect("tantivy ships English stop words"))
        .filter(Stemmer::new(Language::English))
        .build()
}

/// A read-only BM25 index over a corpus. Searches share one reader and take a fresh searcher
/// each, so the index can be searched from many threads at once (`&self`, `Send + Sync`).
pub struct RetrievalIndex {
    dir: PathBuf,
    reader: IndexReader,
    /// Cuts queries into terms exactly as the corpus was cut; cloned per query because a token
    /// stream borrows its analyzer mutably.
    analyzer: TextAnalyzer,
    fields: Fields,
}

impl RetrievalIndex {
    /// Builds an index from a JSON Lines corpus into `out_dir`, which is created if missing and
    /// must be empty if present. Each non-blank line is an object with fields `id`, `text` and
    /// optionally `title` (defaults to the id); any other field, a missing or empty `id` or
    /// `text`, or a repeated `id` is an error naming the line.
    pub fn build(corpus: &Path, out_dir: &Path) -> Result<BuildStats, RetrievalError> {
        let started = Instant::now();
        let read_error = |source| RetrievalError::ReadCorpus {
            path: corpus.to_owned(),
            source,
        };
        let write_error = |source| RetrievalError::Write {
            dir: out_dir.to_owned(),
            source,
        };
        // Open the corpus first so that a wrong path leaves no directory behind.
        let lines = BufReader::new(File::open(corpus).map_err(read_error)?).lines();
        create_empty_dir(out_dir)?;

        let (schema, fields) = Fields::schema();
        let index = Index::create_in_dir(out_dir, schema).map_err(write_error)?;
        index.tokenizers().register(TOKENIZER, analyzer());
        let mut writer = index
            .writer::<TantivyDocument>(WRITER_MEMORY_BYTES)
            .map_err(write_error)?;
        let mut first_line_of: HashMap<String, u64> = HashMap::new();
        let mut documents = 0;
        for (number, line) in (1..).zip(lines) {
            let line = line.map_err(read_error)?;
            if line.trim().is_empty() {
                continue;
            }
            let record = parse_record(&line, corpus, number)?;
            if let Some(&first_line) = first_line_of.get(&record.id) {
                return Err(RetrievalError::DuplicateId {
                    path: corpus.to_owned(),
                    line: number,
                    id: record.id,
                    first_line,
                });
            }
            let title = if record.title.trim().is_empty() {
                &record.id
            } else {
                &record.title
            };
            writer
                .add_document(doc!(
                    fields.id => record.id.as_str(),
                    fields.title => title.as_str(),
                    fields.text => record.text.as_str(),
                ))
                .map_err(write_error)?;
            first_line_of.insert(record.id, number);
            documents += 1;
        }
        writer.commit().map_err(write_error)?;
        writer.wait_merging_threads().map_err(write_error)?;
        Ok(BuildStats {
            documents,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Opens an index made by [`RetrievalIndex::build`].
    pub(crate) fn open(dir: &Path) -> Result<RetrievalIndex, RetrievalError> {
        let open_error = |source| RetrievalError::Open {
            dir: dir.to_owned(),
            source,
        };
        let index = Index::open_in_dir(dir).map_err(open_error)?;
        index.tokenizers().register(TOKENIZER, analyzer());
        let fields = Fields::of(&index.schema(), dir)?;
        // The index never changes after `build`, so the reader never needs to reload.
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(open_error)?;
        Ok(RetrievalIndex {
            dir: dir.to_owned(),
            reader,
            analyzer: analyzer(),
            fields,
        })
    }

    /// The top `k` passages for a free-text query, best first, each text cut to `max_chars`
    /// characters. The query is a bag of words: quotes, colons, parentheses, `AND`/`NOT` and
    /// the like are separators, never syntax, so no query fails to parse and none can turn
    /// into "match everything" (as tantivy's lenient parser makes of `AND OR NOT`).
    pub(crate) fn search(
        &self,
        query: &str,
        k: usize,
        max_chars: usize,
    ) -> Result<Vec<Passage>, RetrievalError> {
        if k == 0 {
            return Ok(Vec::new());
        }
        let search_error = |source| RetrievalError::Search {
            dir: self.dir.clone(),
            source,
        };
        let query = self.bag_of_words(query);
        let searcher = self.reader.searcher();
        let hits = searcher
            .search(&query, &TopDocs::with_limit(k).order_by_score())
            .map_err(search_error)?;
        hits.into_iter()
            .map(|(score, address)| {
                let doc: TantivyDocument = searcher.doc(address).map_err(search_error)?;
                let field = |field| doc.get_first(field).and_then(|v| v.as_str()).unwrap_or("");
                Ok(Passage {
                    id: field(self.fields.id).to_owned(),
                    title: field(self.fields.title).to_owned(),
                    text: truncate_chars(field(self.fields.text), max_chars),
                    score,
                })
            })
            .collect()
    }

    /// BM25 over the query's distinct terms, each matched in the title (boosted) or the text,
    /// plus the same sum again for documents that have every term. Without that bonus a short
    /// document whose name holds two generic query words (`multiprocessing.spawn.get_command_line`
    /// for "parse command line arguments") outranks the one that covers the whole question
    /// (`argparse`); when no document has every term the bonus is absent and plain BM25 ranks.
    fn bag_of_words(&self, query: &str) -> BooleanQuery {
        let mut terms: Vec<String> = Vec::new();
        let mut analyzer = self.analyzer.clone();
        let mut tokens = analyzer.token_stream(query);
        while let Some(token) = tokens.next() {
            if !terms.contains(&token.text) {
                terms.push(token.text.clone());
            }
        }
        let field_query = |field, term: &str| -> Box<dyn Query> {
            let term = Term::from_field_text(field, term);
            Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs))
        };
        let per_term: Vec<Box<dyn Query>> = terms
            .iter()
            .map(|term| {
                let title = BoostQuery::new(field_query(self.fields.title, term), TITLE_BOOST);
                let either = vec![
                    Box::new(title) as Box<dyn Query>,
                    field_query(self.fields.text, term),
                ];
                Box::new(BooleanQuery::union(either)) as Box<dyn Query>
            })
            .collect();
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = per_term
            .iter()
            .map(|q| (Occur::Should, q.box_clone()))
            .collect();
        if per_term.len() > 1 {
            let every_term = per_term.into_iter().map(|q| (Occur::Must, q)).collect();
            clauses.push((Occur::Should, Box::new(BooleanQuery::new(every_term))));
        }
        BooleanQuery::new(clauses)
    }

    /// Renders passages as the observation the orchestrator sees:
    /// `Documents:\n[1] title\ntext\n\n[2] title\ntext`.
    pub(crate) fn render(passages: &[Passage]) -> String {
        if passages.is_empty() {
            return "Documents:\n(no matching documents)".to_owned();
        }
        let entries: Vec<String> = passages
            .iter()
            .enumerate()
            .map(|(i, p)| format!("[{}] {}\n{}", i + 1, p.title, p.text))
            .collect();
        format!("Documents:\n{}", entries.join("\n\n"))
    }
}

/// Creates `dir`, or accepts it if it exists and is empty.
fn create_empty_dir(dir: &Path) -> Result<(), RetrievalError> {
    let create_error = |source| RetrievalError::CreateDir {
        dir: dir.to_owned(),
        source,
    };
    match std::fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(RetrievalError::DirNotEmpty {
                dir: dir.to_owned(),
            }),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(create_error)
        }
        Err(e) => Err(create_error(e)),
    }
}

/// Parses one corpus line and checks that `id` and `text` are not blank.
fn parse_record(line: &str, path: &Path, number: u64) -> Result<CorpusRecord, RetrievalError> {
    let record: CorpusRecord =
        serde_json::from_str(line).map_err(|e| RetrievalError::BadRecord {
            path: path.to_owned(),
            line: number,
            column: e.column(),
            reason: without_position(&e),
        })?;
    for (field, value) in [("id", &record.id), ("text", &record.text)] {
        if value.trim().is_empty() {
            return Err(RetrievalError::EmptyField {
                path: path.to_owned(),
                line: number,
                field,
            });
        }
    }
    Ok(record)
}

/// serde_json's message without its " at line L column C" suffix: L is always 1 here (each
/// record is parsed on its own), which would contradict the corpus line the error reports.
fn without_position(e: &serde_json::Error) -> String {
    let message = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    message
        .strip_suffix(&suffix)
        .map(str::to_owned)
        .unwrap_or(message)
}

/// `text` cut to at most `max_chars` characters (not bytes), the last of them an ellipsis when
/// anything was cut.
fn truncate_chars(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        None => text.to_owned(),
        Some(_) if max_chars == 0 => String::new(),
        Some(_) => {
            // Byte offset of the character that the ellipsis replaces.
            let (cut, _) = text.char_indices().nth(max_chars - 1).expect("fewer chars");
            let mut out = String::with_capacity(cut + ELLIPSIS.len_utf8());
            out.push_str(&text[..cut]);
            out.push(ELLIPSIS);
            out
        }
    }
}

/// The `retrieval` backend: each call's prompt (the query the chosen model wrote) is searched in a
/// local index built by `tutti index`, and the observation is the rendered top-k passages.
pub(crate) struct RetrievalBackend {
    index: std::sync::Arc<RetrievalIndex>,
    top_k: usize,
    passage_chars: usize,
}

/// Queries are cut to this many characters: a model that rambles still searches for its start.
const MAX_QUERY_CHARS: usize = 512;

impl RetrievalBackend {
    pub(crate) fn new(
        cfg: &crate::config::RetrievalBackendConfig,
    ) -> Result<RetrievalBackend, String> {
        let dir = cfg
            .index
            .as_ref()
            .ok_or("a `retrieval` backend needs `index`, the directory `tutti index` built")?;
        let index = RetrievalIndex::open(dir).map_err(|e| e.to_string())?;
        Ok(RetrievalBackend {
            index: std::sync::Arc::new(index),
            top_k: cfg.top_k,
            passage_chars: cfg.passage_chars,
        })
    }
}

impl super::Backend for RetrievalBackend {
    fn call_batch(
        &self,
        requests: Vec<super::Request>,
    ) -> futures::stream::BoxStream<'static, super::BatchItem> {
        use futures::StreamExt;
        let items: Vec<super::BatchItem> = requests
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let query: String = r.prompt.trim().chars().take(MAX_QUERY_CHARS).collect();
                let result = self
                    .index
                    .search(&query, self.top_k, self.passage_chars)
                    .map(|passages| {
                        let text = RetrievalIndex::render(&passages);
                        super::Response {
                            output_tokens: (text.len() as u64).div_ceil(4),
                            text,
                            input_tokens: 0,
                            billed_seconds: 0.0,
                        }
                    })
                    .map_err(|e| super::BackendError::Failed {
                        backend: "retrieval".into(),
                        message: e.to_string(),
                    });
                (i, result)
            })
            .collect();
        futures::stream::iter(items).boxed()
    }

    /// A search is a function of its query.
    fn deterministic(&self, _request: &super::Request) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped corpus: relative to the engine crate, or at its absolute path when this file
    /// is compiled from a crate elsewhere.
    fn corpus() -> PathBuf {
        let relative = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/corpus/python-stdlib.jsonl"
        ));
        if relative.is_file() {
            relative.to_owned()
        } else {
            PathBuf::from("/work/main/examples/corpus/python-stdlib.jsonl")
        }
    }

    fn build_corpus(lines: &[&str]) -> (tempfile::TempDir, Result<BuildStats, RetrievalError>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corpus.jsonl");
        std::fs::write(&path, lines.join("\n")).unwrap();
        let result = RetrievalIndex::build(&path, &dir.path().join("index"));
        (dir, result)
    }

    fn build_error(lines: &[&str]) -> String {
        match build_corpus(lines).1 {
            Ok(stats) => panic!("expected an error, built {stats:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn small_index(lines: &[&str]) -> (tempfile::TempDir, RetrievalIndex) {
        let (dir, result) = build_corpus(lines);
        result.unwrap();
        let index = RetrievalIndex::open(&dir.path().join("index")).unwrap();
        (dir, index)
    }

    const GOOD: &str = r#"{"id": "a", "title": "A", "text": "alpha"}"#;

    #[test]
    fn known_queries_find_their_documents_in_top_3() {
        let dir = tempfile::tempdir().unwrap();
        let stats = RetrievalIndex::build(&corpus(), dir.path()).unwrap();
        println!(
            "built shipped corpus: {} documents in {:.3} s = {:.0} documents/s",
            stats.documents,
            stats.seconds,
            stats.docs_per_s()
        );
        let index = RetrievalIndex::open(dir.path()).unwrap();
        // (query as a user would type it, ids any one of which must be in the top 3)
        let cases: &[(&str, &[&str])] = &[
            (
                "serialize an object to a JSON formatted string",
                &["json.dumps"],
            ),
            ("compute the sha256 hash", &["hashlib", "hashlib.sha256"]),
            (
                "parse command line arguments",
                &["argparse", "argparse.ArgumentParser"],
            ),
            ("regular expression search", &["re.search", "re"]),
            (
                "current date and time",
                &["datetime", "datetime.datetime", "time.time", "time.ctime"],
            ),
            (
                "run a command in a subprocess and wait for it",
                &["subprocess.run", "subprocess.call", "subprocess"],
            ),
            ("join path components", &["os.path.join"]),
            (
                "create a temporary directory",
                &["tempfile.mkdtemp", "tempfile.TemporaryDirectory"],
            ),
            ("read and write CSV files", &["csv"]),
        ];
        let mut misses = Vec::new();
        for (query, expected) in cases {
            let top: Vec<String> = index
                .search(query, 3, 80)
                .unwrap()
                .into_iter()
                .map(|p| p.id)
                .collect();
            if !top.iter().any(|id| expected.contains(&id.as_str())) {
                misses.push(format!(
                    "{query:?}: expected one of {expected:?}, got {top:?}"
                ));
            }
        }
        assert!(misses.is_empty(), "misses:\n{}", misses.join("\n"));
    }

    #[test]
    fn build_stats_count_documents_and_blank_lines_are_skipped() {
        let (_dir, result) = build_corpus(&[
            GOOD,
            "",
            r#"{"id": "b", "text": "beta"}"#,
            "  ",
            r#"{"id": "c", "title": "C", "text": "gamma"}"#,
        ]);
        let stats = result.unwrap();
        assert_eq!(stats.documents, 3);
        assert!(stats.docs_per_s() > 0.0);
    }

    #[test]
    fn shipped_corpus_documents_are_all_counted() {
        let lines = std::fs::read_to_string(corpus()).unwrap();
        let expected = lines.lines().filter(|l| !l.trim().is_empty()).count() as u64;
        let dir = tempfile::tempdir().unwrap();
        let stats = RetrievalIndex::build(&corpus(), dir.path()).unwrap();
        assert_eq!(stats.documents, expected);
        assert!(
            expected > 1000,
            "the shipped corpus has {expected} documents"
        );
    }

    #[test]
    fn malformed_json_names_the_line() {
        let e = build_error(&[GOOD, r#"{"id": "b", "text": "#]);
        assert!(e.contains("corpus.jsonl, line 2"), "{e}");
    }

    #[test]
    fn missing_text_names_the_line_and_field() {
        let e = build_error(&[
            GOOD,
            GOOD.replace("\"a\"", "\"b\"").as_str(),
            r#"{"id": "c"}"#,
        ]);
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("missing field `text`"), "{e}");
    }

    #[test]
    fn unknown_field_names_the_line_and_field() {
        let e = build_error(&[r#"{"id": "a", "txt": "alpha"}"#]);
        assert!(e.contains("line 1"), "{e}");
        assert!(e.contains("unknown field `txt`"), "{e}");
    }

    #[test]
    fn empty_id_or_text_names_the_line_and_field() {
        let e = build_error(&[GOOD, r#"{"id": " ", "text": "beta"}"#]);
        assert!(e.contains("line 2: field `id` is empty"), "{e}");
        let e = build_error(&[r#"{"id": "a", "text": ""}"#]);
        assert!(e.contains("line 1: field `text` is empty"), "{e}");
    }

    #[test]
    fn duplicate_id_names_both_lines() {
        let e = build_error(&[GOOD, GOOD]);
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains("already used on line 1"), "{e}");
    }

    #[test]
    fn missing_corpus_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.jsonl");
        let e = RetrievalIndex::build(&missing, &dir.path().join("index")).unwrap_err();
        assert!(matches!(e, RetrievalError::ReadCorpus { .. }), "{e}");
        assert!(e.to_string().contains("nope.jsonl"), "{e}");
        assert!(!dir.path().join("index").exists());
    }

    #[test]
    fn build_refuses_a_non_empty_directory() {
        let dir = tempfile::tempdir().unwrap();
        let corpus = dir.path().join("corpus.jsonl");
        std::fs::write(&corpus, GOOD).unwrap();
        let e = RetrievalIndex::build(&corpus, dir.path()).unwrap_err();
        assert!(matches!(e, RetrievalError::DirNotEmpty { .. }), "{e}");
    }

    #[test]
    fn open_of_a_non_index_names_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let e = RetrievalIndex::open(dir.path())
            .err()
            .expect("not an index");
        assert!(
            e.to_string().contains(&dir.path().display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn truncation_counts_chars_and_marks_the_cut() {
        let text = "żółw ćma — 日本語のテキスト";
        assert_eq!(truncate_chars(text, 100), text);
        assert_eq!(truncate_chars(text, text.chars().count()), text);
        assert_eq!(truncate_chars(text, 0), "");
        for max in 1..text.chars().count() {
            let cut = truncate_chars(text, max);
            assert_eq!(cut.chars().count(), max, "{cut}");
            assert!(cut.ends_with(ELLIPSIS), "{cut}");
            let kept = cut.strip_suffix(ELLIPSIS).unwrap();
            assert!(text.starts_with(kept), "{cut}");
        }
    }

    #[test]
    fn search_cuts_passages_to_max_chars() {
        let text = "ünïcödé ".repeat(50);
        let line = serde_json::json!({"id": "u", "title": "unicode", "text": text}).to_string();
        let (_dir, index) = small_index(&[&line]);
        let hits = index.search("unicode", 5, 20).unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].text.chars().count(), 20);
        assert!(hits[0].text.ends_with(ELLIPSIS));
        assert!(text.starts_with(hits[0].text.trim_end_matches(ELLIPSIS)));
    }

    #[test]
    fn query_syntax_characters_do_not_error() {
        let (_dir, index) = small_index(&[
            GOOD,
            r#"{"id": "b", "title": "json.dumps", "text": "Serialize obj to a JSON formatted str."}"#,
        ]);
        for query in [
            r#"json.dumps("x", indent=2)"#,
            r#""unclosed quote"#,
            "title: json:",
            "a:b:c",
            "(((",
            ")",
            "+-!^~*?[]{}\\/",
            "AND OR NOT",
            "",
            "   ",
        ] {
            index
                .search(query, 3, 100)
                .unwrap_or_else(|e| panic!("{query:?}: {e}"));
        }
        let hits = index
            .search(r#"json.dumps("x", indent=2)"#, 3, 100)
            .unwrap();
        assert_eq!(hits.first().map(|p| p.id.as_str()), Some("b"));
        assert!(index.search("alpha", 0, 100).unwrap().is_empty());
        // Operators are words (stop words here), not "match everything".
        assert!(index.search("AND OR NOT", 3, 100).unwrap().is_empty());
    }

    #[test]
    fn title_outranks_the_same_word_in_text() {
        let (_dir, index) = small_index(&[
            r#"{"id": "in-text", "title": "other", "text": "zebra stripes"}"#,
            r#"{"id": "in-title", "title": "zebra", "text": "black and white stripes"}"#,
        ]);
        let hits = index.search("zebra", 2, 100).unwrap();
        assert_eq!(hits[0].id, "in-title", "{hits:?}");
    }

    #[test]
    fn a_document_with_every_term_outranks_a_short_partial_match() {
        let (_dir, index) = small_index(&[
            r#"{"id": "spawn.get_command_line", "text": "Returns the command line of a child"}"#,
            r#"{"id": "argparse", "text": "Command-line parsing library. It handles optional and positional arguments, produces usage messages and supports sub-parsers that dispatch on the first word of the command line."}"#,
        ]);
        let hits = index
            .search("parse command line arguments", 2, 100)
            .unwrap();
        assert_eq!(hits[0].id, "argparse", "{hits:?}");
    }

    #[test]
    fn searches_run_concurrently_on_one_index() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<RetrievalIndex>();
        let (_dir, index) = small_index(&[GOOD, r#"{"id": "b", "text": "beta"}"#]);
        std::thread::scope(|s| {
            for query in ["alpha", "beta", "alpha", "beta"] {
                let index = &index;
                s.spawn(move || {
                    let hits = index.search(query, 1, 10).unwrap();
                    assert_eq!(hits[0].text, query);
                });
            }
        });
    }

    #[test]
    fn render_numbers_passages() {
        let passage = |id: &str, text: &str| Passage {
            id: id.into(),
            title: id.to_uppercase(),
            text: text.into(),
            score: 1.0,
        };
        let rendered = RetrievalIndex::render(&[passage("a", "alpha"), passage("b", "beta")]);
        assert_eq!(rendered, "Documents:\n[1] A\nalpha\n\n[2] B\nbeta");
        assert_eq!(
            RetrievalIndex::render(&[]),
            "Documents:\n(no matching documents)"
        );
    }
}
