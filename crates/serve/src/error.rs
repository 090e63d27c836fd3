//! The error type of kiln-serve.

/// A `Result` whose error is [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while loading models, serving, or calling a server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The registry could not resolve or read a model.
    #[error(transparent)]
    Track(#[from] kiln_track::Error),
    /// Data could not be read, written or hashed.
    #[error(transparent)]
    Data(#[from] kiln_data::Error),
    /// A model package could not be loaded or used.
    #[error(transparent)]
    Train(#[from] kiln_train::Error),
    /// The listening address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The server failed while running or shutting down.
    #[error("server: {0}")]
    Server(String),
    /// A request to a server failed, or it answered with an error.
    #[error("{url}: {message}")]
    Client {
        /// The URL called.
        url: String,
        /// What went wrong (the server's error message for HTTP errors).
        message: String,
    },
    /// Two models with the same name were given to one server.
    #[error("model {0:?} is loaded twice")]
    DuplicateModel(String),
    /// A setting or argument is out of range.
    #[error("{0}")]
    InvalidArgument(String),
    /// No model of that name is served.
    #[error("{0}")]
    UnknownModel(String),
    /// The deployment is not in a state that allows the change (no canary to promote, a
    /// version already served).
    #[error("{0}")]
    Conflict(String),
}
