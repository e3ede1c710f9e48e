//! Manifest errors: one or more messages, each anchored at a 1-based line and column of the input.

use std::fmt;
use std::ops::Range;

use serde::Serialize;

/// One problem in a manifest, located at a 1-based line and column (columns count characters).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Every problem found in a manifest (at least one), in order of position.
///
/// Displays one problem per line as `<file>:<line>:<column>: <message>`; the file name defaults to
/// `scalebox.toml` and can be set with [`ManifestErrors::with_file`]. Serialises as
/// `{"file": ..., "errors": [{"line", "column", "message"}]}` for API responses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestErrors {
    file: String,
    errors: Vec<ManifestError>,
}

/// File name shown in error messages unless [`ManifestErrors::with_file`] sets another.
pub const DEFAULT_FILE_NAME: &str = "scalebox.toml";

impl ManifestErrors {
    pub(crate) fn new(mut errors: Vec<ManifestError>) -> Self {
        debug_assert!(!errors.is_empty());
        errors.sort_by_key(|e| (e.line, e.column));
        errors.dedup();
        ManifestErrors {
            file: DEFAULT_FILE_NAME.to_owned(),
            errors,
        }
    }

    /// Shows `path` instead of `scalebox.toml` in front of each message.
    pub fn with_file(mut self, path: impl fmt::Display) -> Self {
        self.file = path.to_string();
        self
    }

    /// The individual problems, sorted by position.
    pub fn errors(&self) -> &[ManifestError] {
        &self.errors
    }

    /// The file name shown in messages.
    pub fn file(&self) -> &str {
        &self.file
    }
}

impl fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}:{}:{}: {}", self.file, e.line, e.column, e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestErrors {}

/// Maps byte offsets of the input to 1-based (line, column) pairs.
pub(crate) struct Locator<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> Locator<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Locator { text, line_starts }
    }

    /// 1-based line and character column of byte `offset` (clamped to the input).
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let start = self.line_starts[line - 1];
        let column = self.text[start..offset].chars().count() + 1;
        (line, column)
    }

    pub(crate) fn error(&self, span: Range<usize>, message: impl Into<String>) -> ManifestError {
        let (line, column) = self.position(span.start);
        ManifestError {
            line,
            column,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let l = Locator::new("ab\nçd\n\nx");
        assert_eq!(l.position(0), (1, 1));
        assert_eq!(l.position(1), (1, 2));
        assert_eq!(l.position(3), (2, 1));
        assert_eq!(l.position(5), (2, 2)); // after the 2-byte 'ç'
        assert_eq!(l.position(4), (2, 1)); // inside 'ç': clamped to its start
        assert_eq!(l.position(7), (3, 1));
        assert_eq!(l.position(8), (4, 1));
        assert_eq!(l.position(999), (4, 2));
    }

    #[test]
    fn display_prefixes_file_line_and_column() {
        let e = ManifestErrors::new(vec![
            ManifestError {
                line: 3,
                column: 1,
                message: "b".into(),
            },
            ManifestError {
                line: 1,
                column: 5,
                message: "a".into(),
            },
        ]);
        assert_eq!(e.to_string(), "scalebox.toml:1:5: a\nscalebox.toml:3:1: b");
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"file":"scalebox.toml","errors":[{"line":1,"column":5,"message":"a"},{"line":3,"column":1,"message":"b"}]}"#
        );
        assert_eq!(
            e.with_file("app/scalebox.toml").to_string(),
            "app/scalebox.toml:1:5: a\napp/scalebox.toml:3:1: b"
        );
    }
}
