//! The ONLY place where errors become gRPC statuses: etcd's exact codes and messages.

use tonic::{Code, Status};

use crate::store;

/// Request-shape errors found before a request reaches the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("key is not provided")]
    EmptyKey,
    #[error("invalid sort option")]
    InvalidSortOption,
    #[error("too many operations in txn request")]
    TooManyOps,
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    #[error("value is provided")]
    ValueProvided,
    #[error("lease is provided")]
    LeaseProvided,
    #[error("request is too large")]
    RequestTooLarge,
    #[error("too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("key not found")]
    KeyNotFound,
}

pub(crate) const MSG_COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
pub(crate) const MSG_FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";

impl From<RequestError> for Status {
    fn from(e: RequestError) -> Status {
        let (code, msg) = match e {
            RequestError::EmptyKey => (Code::InvalidArgument, "etcdserver: key is not provided"),
            RequestError::InvalidSortOption => {
                (Code::InvalidArgument, "etcdserver: invalid sort option")
            }
            RequestError::TooManyOps => (
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            RequestError::DuplicateKey => (
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            RequestError::ValueProvided => (Code::InvalidArgument, "etcdserver: value is provided"),
            RequestError::LeaseProvided => (Code::InvalidArgument, "etcdserver: lease is provided"),
            RequestError::RequestTooLarge => {
                (Code::InvalidArgument, "etcdserver: request is too large")
            }
            RequestError::LeaseTtlTooLarge => (Code::OutOfRange, "etcdserver: too large lease TTL"),
            RequestError::KeyNotFound => (Code::InvalidArgument, "etcdserver: key not found"),
        };
        Status::new(code, msg)
    }
}

impl From<store::Error> for Status {
    fn from(e: store::Error) -> Status {
        match e {
            store::Error::FutureRevision => Status::new(Code::OutOfRange, MSG_FUTURE_REV),
            store::Error::Compacted => Status::new(Code::OutOfRange, MSG_COMPACTED),
            store::Error::KeyNotFound => RequestError::KeyNotFound.into(),
            store::Error::LeaseNotFound => {
                Status::new(Code::NotFound, "etcdserver: requested lease not found")
            }
            store::Error::LeaseExists => {
                Status::new(Code::FailedPrecondition, "etcdserver: lease already exists")
            }
            store::Error::Shutdown => Status::new(Code::Unavailable, "etcdserver: server stopped"),
            store::Error::Commit(reason) => {
                tracing::warn!(%reason, "write rejected: not durable");
                Status::new(
                    Code::Unavailable,
                    format!("netsy: write not durable, nothing was applied: {reason}"),
                )
            }
            store::Error::Sqlite(err) => {
                tracing::error!(error = %err, "local database error");
                Status::new(Code::Internal, "netsy: local database error")
            }
            store::Error::Indeterminate(reason) => {
                tracing::warn!(%reason, "write outcome unknown");
                timed_out()
            }
            store::Error::Unavailable(reason)
            | store::Error::Export(reason)
            | store::Error::Internal(reason) => {
                tracing::error!(%reason, "store error");
                Status::new(Code::Internal, format!("netsy: {reason}"))
            }
            store::Error::Corrupt(reason) => {
                tracing::error!(%reason, "local database corrupt");
                Status::new(Code::DataLoss, "etcdserver: corrupt cluster")
            }
        }
    }
}

/// The status a method we do not implement answers with.
pub(crate) fn unimplemented(method: &str) -> Status {
    Status::new(
        Code::Unimplemented,
        format!("method {method} not implemented"),
    )
}

/// etcd's answer while there is no leader to serve a request: clients retry, maybe elsewhere.
pub(crate) fn leader_changed() -> Status {
    Status::new(Code::Unavailable, "etcdserver: leader changed")
}

/// etcd's answer when a request's outcome is not known in time (it may have been executed).
pub(crate) fn timed_out() -> Status {
    Status::new(Code::Unavailable, "etcdserver: request timed out")
}

/// The status while the node is not serving (loading or degraded).
pub(crate) fn not_ready() -> Status {
    Status::new(Code::Unavailable, "etcdserver: not capable")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_etcds() {
        let s: Status = store::Error::Compacted.into();
        assert_eq!((s.code(), s.message()), (Code::OutOfRange, MSG_COMPACTED));
        let s: Status = RequestError::DuplicateKey.into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(
            s.message(),
            "etcdserver: duplicate key given in txn request"
        );
        let s: Status = store::Error::LeaseNotFound.into();
        assert_eq!(
            (s.code(), s.message()),
            (Code::NotFound, "etcdserver: requested lease not found")
        );
    }
}
