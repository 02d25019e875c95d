//! The Docker access token and where it comes from.
//!
//! The token is the one secret this program holds. It lives only in
//! [`Token`], whose `Debug` and `Display` print a fixed marker, and it is
//! read out only to build the `Authorization` header of a request to Scout.
//! A token file is read again when it changes on disk and after Scout
//! answers 401, so a rotated token is picked up without a restart.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// What `Debug` and `Display` print instead of a token.
pub const REDACTED: &str = "[REDACTED]";

/// A Docker personal or organization access token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a token, trimming the whitespace and newline a file or a shell
    /// may have added. An empty token is refused.
    pub fn new(raw: impl Into<String>) -> Option<Token> {
        let raw = raw.into();
        let trimmed = raw.trim();
        if trimmed.is_empty() { None } else { Some(Token(trimmed.to_string())) }
    }

    /// The secret itself. Call it only to build a request to Scout.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Why a token could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token file could not be read.
    #[error("cannot read token file {path}: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The token file holds only whitespace.
    #[error("token file {0} is empty")]
    Empty(PathBuf),
}

/// Where an organization's token comes from.
#[derive(Debug)]
pub enum TokenSource {
    /// Given once, from the environment or by the program itself.
    Fixed(Token),
    /// A file, read again whenever it changes or Scout refuses the token.
    File(TokenFile),
}

impl TokenSource {
    /// A source that reads `path`, checking now that it holds a token.
    pub fn file(path: impl Into<PathBuf>) -> Result<TokenSource, TokenError> {
        let file = TokenFile { path: path.into(), cached: Mutex::new(None) };
        file.current()?;
        Ok(TokenSource::File(file))
    }

    /// The token to send now.
    pub fn current(&self) -> Result<Token, TokenError> {
        match self {
            TokenSource::Fixed(token) => Ok(token.clone()),
            TokenSource::File(file) => file.current(),
        }
    }

    /// Forgets a cached file token, so the next request reads the file
    /// again. Called after Scout answers 401.
    pub fn invalidate(&self) {
        if let TokenSource::File(file) = self {
            *file.cached.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    /// The file behind this source, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            TokenSource::Fixed(_) => None,
            TokenSource::File(file) => Some(&file.path),
        }
    }
}

/// A token file and the token last read from it.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    /// Modification time and length at the last read, and the token.
    cached: Mutex<Option<(Option<SystemTime>, u64, Token)>>,
}

impl TokenFile {
    fn current(&self) -> Result<Token, TokenError> {
        let unreadable = |source| TokenError::Unreadable { path: self.path.clone(), source };
        let meta = std::fs::metadata(&self.path).map_err(unreadable)?;
        let stamp = (meta.modified().ok(), meta.len());
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((modified, len, token)) = cached.as_ref()
            && (*modified, *len) == stamp
        {
            return Ok(token.clone());
        }
        let text = std::fs::read_to_string(&self.path).map_err(unreadable)?;
        let token = Token::new(text).ok_or_else(|| TokenError::Empty(self.path.clone()))?;
        *cached = Some((stamp.0, stamp.1, token.clone()));
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_secret() {
        let token = Token::new("dckr_pat_SECRET123").unwrap();
        assert_eq!(format!("{token}"), REDACTED);
        assert_eq!(format!("{token:?}"), REDACTED);
        assert_eq!(format!("{:?}", Some(&token)), format!("Some({REDACTED})"));
        let source = TokenSource::Fixed(token.clone());
        assert!(!format!("{source:?}").contains("SECRET"));
        assert_eq!(token.expose(), "dckr_pat_SECRET123");
    }

    #[test]
    fn whitespace_is_trimmed_and_empty_refused() {
        assert_eq!(Token::new("  abc\n").unwrap().expose(), "abc");
        assert!(Token::new(" \n").is_none());
    }

    #[test]
    fn file_is_read_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let source = TokenSource::file(&path).unwrap();
        assert_eq!(source.current().unwrap().expose(), "first");
        std::fs::write(&path, "second-longer\n").unwrap();
        assert_eq!(source.current().unwrap().expose(), "second-longer");
    }

    #[test]
    fn invalidate_forces_a_fresh_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "aaaa").unwrap();
        let source = TokenSource::file(&path).unwrap();
        source.current().unwrap();
        // Same length, and possibly the same modification time.
        std::fs::write(&path, "bbbb").unwrap();
        source.invalidate();
        assert_eq!(source.current().unwrap().expose(), "bbbb");
    }

    #[test]
    fn empty_or_missing_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "\n").unwrap();
        let err = TokenSource::file(&path).unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");
        let err = TokenSource::file(dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().starts_with("cannot read token file"), "{err}");
    }
}
