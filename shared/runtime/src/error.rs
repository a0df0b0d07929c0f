//! Errors and their one exhaustive mapping to `google.rpc.Status`.
//! Internal and database errors are logged and answered with a generic
//! message; invalid input carries `BadRequest` field violations.

use sea_orm::{DbErr, SqlErr};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Field violations collected while validating a request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FieldViolations(Vec<(String, String)>);

impl FieldViolations {
    /// No violations yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Record that `field` is invalid, and why.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push((field.into(), description.into()));
    }

    /// Record a violation unless `ok` holds.
    pub fn require(&mut self, ok: bool, field: impl Into<String>, description: impl Into<String>) {
        if !ok {
            self.add(field, description);
        }
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The violations recorded, as (field, description).
    pub fn violations(&self) -> &[(String, String)] {
        &self.0
    }

    /// `Ok(())` if nothing was recorded, else INVALID_ARGUMENT.
    pub fn finish(self) -> Result<(), RuntimeError> {
        if self.0.is_empty() { Ok(()) } else { Err(RuntimeError::InvalidArgument(self)) }
    }

    /// A single violation as an error.
    pub fn single(field: impl Into<String>, description: impl Into<String>) -> RuntimeError {
        let mut v = Self::new();
        v.add(field, description);
        RuntimeError::InvalidArgument(v)
    }
}

/// The errors every service can answer with.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// INVALID_ARGUMENT: the request is malformed; details name each field.
    #[error("invalid argument")]
    InvalidArgument(FieldViolations),
    /// NOT_FOUND: the named resource does not exist.
    #[error("{resource} {id} not found")]
    NotFound {
        /// Kind of resource, e.g. "profile".
        resource: &'static str,
        /// Its id as given.
        id: String,
    },
    /// ALREADY_EXISTS: a resource with that key exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// FAILED_PRECONDITION: the system is not in a state to do this
    /// (etag mismatch, consent refused, insufficient points, …).
    #[error("{0}")]
    FailedPrecondition(String),
    /// ABORTED: a concurrent change won; retrying may succeed.
    #[error("{0}")]
    Aborted(String),
    /// DEADLINE_EXCEEDED: waited the whole deadline (e.g. for a projection).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// UNAVAILABLE: a dependency (database, another service) is down; retry.
    #[error("{0}")]
    Unavailable(String),
    /// RESOURCE_EXHAUSTED: load shedding.
    #[error("{0}")]
    ResourceExhausted(String),
    /// INTERNAL: a database failure; logged, never echoed.
    #[error("database error: {0}")]
    Database(#[from] DbErr),
    /// INTERNAL: a bug or corrupt data; logged, never echoed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl RuntimeError {
    /// Whether a database error is a unique-constraint violation.
    pub fn is_unique_violation(err: &DbErr) -> bool {
        matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
    }
}

impl From<RuntimeError> for Status {
    fn from(err: RuntimeError) -> Self {
        match err {
            RuntimeError::InvalidArgument(v) => {
                let mut details = ErrorDetails::new();
                for (field, description) in v.0 {
                    details.add_bad_request_violation(field, description);
                }
                Status::with_error_details(Code::InvalidArgument, "invalid argument", details)
            }
            e @ RuntimeError::NotFound { .. } => Status::not_found(e.to_string()),
            RuntimeError::AlreadyExists(m) => Status::already_exists(m),
            RuntimeError::FailedPrecondition(m) => Status::failed_precondition(m),
            RuntimeError::Aborted(m) => Status::aborted(m),
            RuntimeError::DeadlineExceeded(m) => Status::deadline_exceeded(m),
            RuntimeError::Unavailable(m) => Status::unavailable(m),
            RuntimeError::ResourceExhausted(m) => Status::resource_exhausted(m),
            RuntimeError::Database(e) => match e {
                DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => {
                    tracing::warn!(error = %e, "database unavailable");
                    Status::unavailable("database unavailable")
                }
                e => {
                    tracing::error!(error = %e, "database error");
                    Status::internal("internal error")
                }
            },
            RuntimeError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

/// The field violations carried by a status, as (field, description).
pub fn field_violations(status: &Status) -> Vec<(String, String)> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| (v.field, v.description)).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_every_field_violation() {
        let mut v = FieldViolations::new();
        v.add("identifiers[0].value", "not an email address");
        v.require(false, "channel", "must be set");
        let status: Status = v.finish().unwrap_err().into();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            field_violations(&status),
            vec![
                ("identifiers[0].value".to_owned(), "not an email address".to_owned()),
                ("channel".to_owned(), "must be set".to_owned()),
            ]
        );
    }

    #[test]
    fn internal_errors_are_not_echoed() {
        let status: Status = RuntimeError::Internal("secret detail".into()).into();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
        let status: Status = RuntimeError::Database(DbErr::Custom("table x".into())).into();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("table"));
    }

    #[test]
    fn empty_violations_are_ok() {
        assert!(FieldViolations::new().finish().is_ok());
    }
}
