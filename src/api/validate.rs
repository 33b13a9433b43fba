//! Request validation as etcd does it before a request is applied: pure functions, no I/O.

use etcd_client::proto::{
    PbDeleteRequest, PbPutRequest, PbRangeRequest, PbTxnOpRequest, PbTxnRequest,
};

use super::status::RequestError;

/// etcd's default limit on operations in one txn (`--max-txn-ops`).
pub(crate) const MAX_TXN_OPS: usize = 128;

pub(crate) fn range(r: &PbRangeRequest) -> Result<(), RequestError> {
    if r.key.is_empty() {
        return Err(RequestError::EmptyKey);
    }
    if etcd_client::SortOrder::try_from(r.sort_order).is_err()
        || etcd_client::SortTarget::try_from(r.sort_target).is_err()
    {
        return Err(RequestError::InvalidSortOption);
    }
    Ok(())
}

pub(crate) fn put(p: &PbPutRequest) -> Result<(), RequestError> {
    if p.key.is_empty() {
        return Err(RequestError::EmptyKey);
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(RequestError::ValueProvided);
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(RequestError::LeaseProvided);
    }
    Ok(())
}

pub(crate) fn delete(d: &PbDeleteRequest) -> Result<(), RequestError> {
    if d.key.is_empty() {
        return Err(RequestError::EmptyKey);
    }
    Ok(())
}

pub(crate) fn txn(t: &PbTxnRequest) -> Result<(), RequestError> {
    check_txn(t, MAX_TXN_OPS)?;
    check_intervals(&t.success)?;
    check_intervals(&t.failure)?;
    Ok(())
}

fn check_txn(t: &PbTxnRequest, max_ops: usize) -> Result<(), RequestError> {
    let opc = t.compare.len().max(t.success.len()).max(t.failure.len());
    if opc > max_ops {
        return Err(RequestError::TooManyOps);
    }
    if t.compare.iter().any(|c| c.key.is_empty()) {
        return Err(RequestError::EmptyKey);
    }
    for op in t.success.iter().chain(t.failure.iter()) {
        match &op.request {
            Some(PbTxnOpRequest::RequestRange(r)) => range(r)?,
            Some(PbTxnOpRequest::RequestPut(p)) => put(p)?,
            Some(PbTxnOpRequest::RequestDeleteRange(d)) => delete(d)?,
            Some(PbTxnOpRequest::RequestTxn(n)) => check_txn(n, max_ops - opc)?,
            None => return Err(RequestError::KeyNotFound),
        }
    }
    Ok(())
}

/// A half-open interval of keys; `end == None` means unbounded.
#[derive(Clone, Debug)]
struct Interval {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Interval {
    fn of(key: &[u8], range_end: &[u8]) -> Interval {
        match range_end {
            [] => {
                let mut end = key.to_vec();
                end.push(0);
                Interval {
                    start: key.to_vec(),
                    end: Some(end),
                }
            }
            [0] => Interval {
                start: key.to_vec(),
                end: None,
            },
            e => Interval {
                start: key.to_vec(),
                end: Some(e.to_vec()),
            },
        }
    }

    fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|e| key < e)
    }
}

/// etcd's rule: within one branch no key may be put twice, and no put may fall in a deleted
/// range, counting nested txns (whose then/else branches may put the same key).
fn check_intervals(
    ops: &[etcd_client::proto::PbTxnRequestOp],
) -> Result<(Vec<Vec<u8>>, Vec<Interval>), RequestError> {
    let mut dels: Vec<Interval> = Vec::new();
    for op in ops {
        if let Some(PbTxnOpRequest::RequestDeleteRange(d)) = &op.request {
            dels.push(Interval::of(&d.key, &d.range_end));
        }
    }
    let mut puts: Vec<Vec<u8>> = Vec::new();
    for op in ops {
        let Some(PbTxnOpRequest::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.iter().any(|d| d.contains(k)) {
                return Err(RequestError::DuplicateKey);
            }
            puts.push(k.clone());
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || dels.iter().any(|d| d.contains(k)) {
                return Err(RequestError::DuplicateKey);
            }
            puts.push(k.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(PbTxnOpRequest::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || dels.iter().any(|d| d.contains(&p.key)) {
            return Err(RequestError::DuplicateKey);
        }
        puts.push(p.key.clone());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_client::proto::PbTxnRequestOp;

    fn put_op(k: &str) -> PbTxnRequestOp {
        PbTxnRequestOp {
            request: Some(PbTxnOpRequest::RequestPut(PbPutRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }
    fn del_op(k: &str, end: &str) -> PbTxnRequestOp {
        PbTxnRequestOp {
            request: Some(PbTxnOpRequest::RequestDeleteRange(PbDeleteRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn duplicate_puts_and_put_in_deleted_range_are_rejected() {
        let t = PbTxnRequest {
            success: vec![put_op("a"), put_op("a")],
            ..Default::default()
        };
        assert_eq!(txn(&t), Err(RequestError::DuplicateKey));
        let t = PbTxnRequest {
            success: vec![del_op("a", "c"), put_op("b")],
            ..Default::default()
        };
        assert_eq!(txn(&t), Err(RequestError::DuplicateKey));
        let t = PbTxnRequest {
            success: vec![del_op("a", "b"), del_op("a", "c")],
            ..Default::default()
        };
        assert_eq!(txn(&t), Ok(()));
        let t = PbTxnRequest {
            success: vec![put_op("a")],
            failure: vec![put_op("a")],
            ..Default::default()
        };
        assert_eq!(txn(&t), Ok(()));
    }

    #[test]
    fn nested_then_else_may_put_the_same_key() {
        let nested = PbTxnRequest {
            success: vec![put_op("k")],
            failure: vec![put_op("k")],
            ..Default::default()
        };
        let op = PbTxnRequestOp {
            request: Some(PbTxnOpRequest::RequestTxn(nested)),
        };
        let t = PbTxnRequest {
            success: vec![op.clone()],
            ..Default::default()
        };
        assert_eq!(txn(&t), Ok(()));
        let t = PbTxnRequest {
            success: vec![op, put_op("k")],
            ..Default::default()
        };
        assert_eq!(txn(&t), Err(RequestError::DuplicateKey));
    }

    #[test]
    fn too_many_ops() {
        let t = PbTxnRequest {
            success: (0..129).map(|i| put_op(&format!("k{i}"))).collect(),
            ..Default::default()
        };
        assert_eq!(txn(&t), Err(RequestError::TooManyOps));
    }
}
