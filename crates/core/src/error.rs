//! Typed errors shared by Ember's library crates.

/// Convenience alias for `Result<T, ember_core::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in an Ember library call. Each variant renders as one
/// line that says what went wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A name (scheduler class, option value, block type, device...) is not one Ember knows.
    #[error("unknown {kind} `{name}`; valid values are: {}", valid.join(", "))]
    UnknownName {
        /// What kind of name it was ("scheduler", "beta_schedule", ...).
        kind: String,
        /// The name that was given.
        name: String,
        /// Every name that would have been accepted.
        valid: Vec<String>,
    },
    /// A configuration field holds a value that cannot work.
    #[error("invalid config field `{field}`: {message}")]
    InvalidConfig {
        /// The field's name as it appears in the config file.
        field: String,
        /// Why the value is rejected.
        message: String,
    },
    /// A configuration could not be parsed at all.
    #[error("cannot parse {what}: {message}")]
    Parse {
        /// What was being parsed (a file name or "scheduler config").
        what: String,
        /// The parser's message.
        message: String,
    },
    /// A call was made with arguments that make no sense (zero steps, bad timesteps, ...).
    #[error("invalid argument `{argument}`: {message}")]
    InvalidArgument {
        /// The argument's name.
        argument: String,
        /// Why it is rejected.
        message: String,
    },
    /// A tensor has the wrong shape.
    #[error("shape mismatch for {what}: expected {expected}, got {got:?}")]
    Shape {
        /// Which tensor.
        what: String,
        /// The expected shape, in words.
        expected: String,
        /// The shape that was given.
        got: Vec<usize>,
    },
    /// A tensor holds NaN or infinite values where finite ones are required.
    #[error("{what} contains NaN or infinite values")]
    NonFinite {
        /// Which tensor.
        what: String,
    },
    /// A checkpoint file or its tensors do not fit the model being loaded.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The file or folder.
        path: String,
        /// What is wrong, naming the tensors.
        message: String,
    },
    /// A dataset file is missing, corrupt or inconsistent.
    #[error("data {path}: {message}")]
    Data {
        /// The file or folder.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// The object is not in a state where this call is allowed (e.g. step before set_timesteps).
    #[error("invalid state: {0}")]
    State(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file's path.
        path: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Shorthand for [`Error::InvalidConfig`].
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidConfig {
            field: field.into(),
            message: message.into(),
        }
    }
    /// Shorthand for [`Error::Data`].
    pub fn data(path: &std::path::Path, message: impl Into<String>) -> Self {
        Error::Data {
            path: path.display().to_string(),
            message: message.into(),
        }
    }
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn argument(argument: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            argument: argument.into(),
            message: message.into(),
        }
    }
    /// Shorthand for [`Error::UnknownName`].
    pub fn unknown<S: AsRef<str>>(kind: &str, name: &str, valid: &[S]) -> Self {
        Error::UnknownName {
            kind: kind.to_string(),
            name: name.to_string(),
            valid: valid.iter().map(|s| s.as_ref().to_string()).collect(),
        }
    }
}
