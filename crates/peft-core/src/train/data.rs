//! Training data: JSONL files of `{"input": ..., "output": ...}` pairs (loss on the output
//! tokens only) or `{"text": ...}` documents (loss on every token), tokenised with an explicit
//! length policy.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{PeftError, Result};

/// Text to token ids, as the model's tokenizer does it.
pub trait Tokenize {
    /// Token ids of `text` starting a sequence (with whatever the tokenizer adds in front, such
    /// as Gemma's BOS).
    fn encode(&self, text: &str) -> std::result::Result<Vec<u32>, String>;
    /// Token ids of `text` continuing a sequence: nothing added in front. The default is
    /// [`encode`](Self::encode), right for tokenizers that add nothing.
    fn encode_continuation(&self, text: &str) -> std::result::Result<Vec<u32>, String> {
        self.encode(text)
    }
    /// The id appended after an output so the model learns to stop (`None`: nothing appended).
    fn eos_id(&self) -> Option<u32>;
}

/// One line of a dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A prompt and the completion to learn.
    Pair {
        /// Prompt (may be empty).
        input: String,
        /// Completion (not empty).
        output: String,
    },
    /// A document learned in full.
    Text(String),
}

/// Parses a JSONL dataset. Blank lines are skipped; any other bad line is an error naming the
/// file and line. An empty dataset is an error.
pub fn read_jsonl(path: &Path) -> Result<Vec<(usize, Record)>> {
    let text = std::fs::read_to_string(path).map_err(|e| PeftError::io(path, e))?;
    parse_jsonl(path, &text)
}

/// [`read_jsonl`] on text already read (`path` is used in error messages).
pub fn parse_jsonl(path: &Path, text: &str) -> Result<Vec<(usize, Record)>> {
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |what: String| PeftError::Data {
            path: path.to_path_buf(),
            line: line_no,
            what,
        };
        let value: Value =
            serde_json::from_str(line).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| bad("expected a JSON object".into()))?;
        let field = |name: &str| -> Result<Option<String>> {
            match obj.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(bad(format!(
                    "field `{name}` must be a string, found {other}"
                ))),
            }
        };
        let record = match (field("text")?, field("input")?, field("output")?) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(bad(
                    "has both `text` and `input`/`output`; use one form per line".into(),
                ));
            }
            (Some(t), None, None) if t.trim().is_empty() => {
                return Err(bad("field `text` is empty".into()));
            }
            (Some(t), None, None) => Record::Text(t),
            (None, Some(_), None) => return Err(bad("missing field `output`".into())),
            (None, None, Some(_)) => return Err(bad("missing field `input`".into())),
            (None, Some(_), Some(o)) if o.trim().is_empty() => {
                return Err(bad("field `output` is empty".into()));
            }
            (None, Some(input), Some(output)) => Record::Pair { input, output },
            (None, None, None) => {
                return Err(bad(
                    "expected field `text`, or fields `input` and `output`".into()
                ));
            }
        };
        records.push((line_no, record));
    }
    if records.is_empty() {
        return Err(PeftError::Data {
            path: path.to_path_buf(),
            line: 0,
            what: "the dataset has no examples".into(),
        });
    }
    Ok(records)
}

/// What to do with an example longer than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Truncation {
    /// Drop tokens from the start of the input (the output is kept whole); documents lose
    /// their end. An output alone longer than the limit is an error.
    #[default]
    Left,
    /// Skip the example (counted in [`Dataset::skipped`]).
    Drop,
    /// Refuse the dataset, naming the line.
    Error,
}

impl std::str::FromStr for Truncation {
    type Err = PeftError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "left" => Ok(Self::Left),
            "drop" => Ok(Self::Drop),
            "error" => Ok(Self::Error),
            other => Err(PeftError::Invalid(format!(
                "unknown truncation `{other}`; expected left, drop or error"
            ))),
        }
    }
}

/// A tokenised example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// Line in the source file.
    pub line: usize,
    /// Token ids (input then output, or the document).
    pub ids: Vec<u32>,
    /// Whether each token is learned.
    pub is_target: Vec<bool>,
    /// Number of input (prompt) tokens; 0 for documents.
    pub input_len: usize,
    /// The raw record.
    pub record: Record,
}

impl Example {
    /// Number of learned tokens (positions that predict them).
    pub fn target_count(&self) -> usize {
        self.is_target.iter().skip(1).filter(|t| **t).count()
    }
}

/// A tokenised dataset.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Source file.
    pub path: PathBuf,
    /// Examples in file order.
    pub examples: Vec<Example>,
    /// Examples dropped by [`Truncation::Drop`].
    pub skipped: usize,
    /// Examples shortened by [`Truncation::Left`].
    pub truncated: usize,
}

impl Dataset {
    /// Tokenises records; `max_len` bounds the real tokens of an example (the caller subtracts
    /// virtual tokens from the model's context).
    pub fn tokenize(
        path: &Path,
        records: Vec<(usize, Record)>,
        tok: &dyn Tokenize,
        max_len: usize,
        truncation: Truncation,
    ) -> Result<Self> {
        let mut examples = Vec::with_capacity(records.len());
        let (mut skipped, mut truncated) = (0, 0);
        for (line, record) in records {
            let bad = |what: String| PeftError::Data {
                path: path.to_path_buf(),
                line,
                what,
            };
            let tokenizing = |e: String| bad(format!("tokenizing: {e}"));
            // The prompt starts the sequence (a BOS, where the tokenizer adds one, even before
            // an empty prompt); the output continues it.
            let (mut input, mut output) = match &record {
                Record::Pair { input, output } => (
                    tok.encode(input).map_err(tokenizing)?,
                    tok.encode_continuation(output).map_err(tokenizing)?,
                ),
                Record::Text(text) => (Vec::new(), tok.encode(text).map_err(tokenizing)?),
            };
            if let Some(eos) = tok.eos_id() {
                output.push(eos);
            }
            let total = input.len() + output.len();
            if total > max_len {
                match truncation {
                    Truncation::Error => {
                        return Err(bad(format!(
                            "{total} tokens exceed the limit of {max_len} (use --truncation left or drop)"
                        )));
                    }
                    Truncation::Drop => {
                        skipped += 1;
                        continue;
                    }
                    Truncation::Left => {
                        if matches!(record, Record::Text(_)) {
                            output.truncate(max_len);
                        } else if output.len() >= max_len {
                            return Err(bad(format!(
                                "the output alone has {} tokens, more than the limit of {max_len}",
                                output.len()
                            )));
                        } else {
                            input.drain(..total - max_len);
                        }
                        truncated += 1;
                    }
                }
            }
            let input_len = input.len();
            let mut is_target = vec![false; input_len];
            is_target.extend(std::iter::repeat_n(true, output.len()));
            input.extend(output);
            if input.len() < 2 {
                return Err(bad("fewer than two tokens: nothing to predict".into()));
            }
            examples.push(Example {
                line,
                ids: input,
                is_target,
                input_len,
                record,
            });
        }
        if examples.is_empty() {
            return Err(PeftError::Data {
                path: path.to_path_buf(),
                line: 0,
                what: format!("no example fits the limit of {max_len} tokens ({skipped} dropped)"),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            examples,
            skipped,
            truncated,
        })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// Whether there are no examples (never true for a tokenised dataset).
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Whether every example is an input/output pair.
    pub fn is_pairs(&self) -> bool {
        self.examples
            .iter()
            .all(|e| matches!(e.record, Record::Pair { .. }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse_jsonl(Path::new("d.jsonl"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        assert_eq!(
            err("{\"text\": \"a\"}\nnot json\n"),
            "d.jsonl:2: not valid JSON: expected ident at line 1 column 2"
        );
        assert_eq!(
            err("{\"input\": \"a\"}"),
            "d.jsonl:1: missing field `output`"
        );
        assert_eq!(
            err("\n\n{\"text\": \"  \"}"),
            "d.jsonl:3: field `text` is empty"
        );
        assert_eq!(
            err("{\"input\": \"a\", \"output\": \"\"}"),
            "d.jsonl:1: field `output` is empty"
        );
        assert_eq!(
            err("{\"text\": 5}"),
            "d.jsonl:1: field `text` must be a string, found 5"
        );
        assert_eq!(err("[1, 2]"), "d.jsonl:1: expected a JSON object");
        assert_eq!(
            err("{\"id\": 1}"),
            "d.jsonl:1: expected field `text`, or fields `input` and `output`"
        );
        assert!(err("{\"text\": \"a\", \"input\": \"b\", \"output\": \"c\"}").contains("both"));
    }

    #[test]
    fn empty_dataset_is_an_error() {
        assert_eq!(err(""), "d.jsonl:0: the dataset has no examples");
        assert_eq!(err("\n  \n"), "d.jsonl:0: the dataset has no examples");
    }

    struct Chars;
    impl Tokenize for Chars {
        fn encode(&self, text: &str) -> std::result::Result<Vec<u32>, String> {
            Ok(text.bytes().map(u32::from).collect())
        }
        fn eos_id(&self) -> Option<u32> {
            Some(0)
        }
    }

    #[test]
    fn pairs_learn_only_the_output_and_truncate_the_input_start() {
        let recs = vec![(
            1,
            Record::Pair {
                input: "abcdef".into(),
                output: "xy".into(),
            },
        )];
        let ds = Dataset::tokenize(Path::new("d"), recs.clone(), &Chars, 100, Truncation::Left)
            .expect("ok");
        let e = &ds.examples[0];
        assert_eq!(
            e.ids,
            b"abcdefxy\0"
                .iter()
                .map(|&b| u32::from(b))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            e.is_target,
            [false, false, false, false, false, false, true, true, true]
        );
        let ds = Dataset::tokenize(Path::new("d"), recs.clone(), &Chars, 5, Truncation::Left)
            .expect("ok");
        assert_eq!(
            ds.examples[0].ids,
            b"efxy\0".iter().map(|&b| u32::from(b)).collect::<Vec<_>>()
        );
        assert_eq!(ds.truncated, 1);
        let err = Dataset::tokenize(Path::new("d"), recs.clone(), &Chars, 5, Truncation::Error)
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("d:1: 9 tokens exceed the limit of 5"),
            "{err}"
        );
        let err = Dataset::tokenize(Path::new("d"), recs, &Chars, 5, Truncation::Drop).unwrap_err();
        assert!(err.to_string().contains("no example fits"), "{err}");
    }
}
