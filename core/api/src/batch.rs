//! `POST /api/v1/records:batch`: many record writes in one request, each atomic on its own and
//! answered in order, for integrators loading or syncing in bulk.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use usm_engine::{NewRecord, RecordPatch};
use usm_model::{ErrorCode, Record};

use crate::{
    Services,
    body::Object,
    principal::Principal,
    problem::{ApiError, Problem},
};

/// Most operations in one batch.
pub const MAX_OPERATIONS: usize = 500;

/// What a batch operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = BatchOp)]
pub enum Op {
    /// Creates `record` (idempotent with `key`).
    Create,
    /// Applies `patch` to record `id`.
    Update,
    /// Moves record `id` `to` a state, with `comment` and `fields`.
    Transition,
}

/// One write of a batch: `create` takes `record` (and `key`), `update` takes `id` and `patch`,
/// `transition` takes `id` and `to` (and `comment`, `fields`); `if_match` conditions the last
/// two on a version.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = BatchOperation)]
pub struct Operation {
    /// What it does.
    pub op: Op,
    /// For `create`: the record.
    #[serde(default)]
    pub record: Option<NewRecord>,
    /// For `create`: an idempotency key; a repeat of the same create answers the first record.
    #[serde(default)]
    pub key: Option<String>,
    /// For `update` and `transition`: the record.
    #[serde(default)]
    pub id: Option<String>,
    /// For `update`: the change.
    #[serde(default)]
    pub patch: Option<RecordPatch>,
    /// For `transition`: the target state.
    #[serde(default)]
    pub to: Option<String>,
    /// For `transition`: why.
    #[serde(default)]
    pub comment: Option<String>,
    /// For `transition`: fields to change with the move (a JSON merge patch).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub fields: Map<String, Value>,
    /// For `update` and `transition`: the version the write is based on (as `If-Match`).
    #[serde(default)]
    pub if_match: Option<u64>,
}

/// A write the batch can do, its members checked.
enum Write {
    Create(NewRecord, Option<String>),
    Update(String, RecordPatch, Option<u64>),
    Transition(
        String,
        String,
        Option<String>,
        Map<String, Value>,
        Option<u64>,
    ),
}

impl Operation {
    fn into_write(self, at: usize) -> Result<Write, ApiError> {
        let missing = |member: &str| {
            ApiError::new(
                ErrorCode::InvalidInput,
                format!("a {:?} operation needs {member}", self.op),
            )
            .with_field(format!("/operations/{at}/{member}"))
        };
        Ok(match self.op {
            Op::Create => Write::Create(self.record.ok_or_else(|| missing("record"))?, self.key),
            Op::Update => Write::Update(
                self.id.clone().ok_or_else(|| missing("id"))?,
                self.patch.clone().ok_or_else(|| missing("patch"))?,
                self.if_match,
            ),
            Op::Transition => Write::Transition(
                self.id.clone().ok_or_else(|| missing("id"))?,
                self.to.clone().ok_or_else(|| missing("to"))?,
                self.comment,
                self.fields,
                self.if_match,
            ),
        })
    }
}

/// A batch of record writes.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// 1-500 writes, done in order.
    pub operations: Vec<Operation>,
}

/// How one write of a batch ended.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = BatchResult)]
pub struct OperationResult {
    /// The HTTP status the write would have had on its own.
    pub status: u16,
    /// The record written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<Record>,
    /// For a create: an earlier create with the same key made the record.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
    /// Why the write was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<Problem>,
}

/// The outcome of each write, in the order sent.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = BatchResults)]
pub struct Results {
    /// One per operation.
    pub results: Vec<OperationResult>,
}

/// Does up to 500 record writes (create, update, transition) in order, each atomic on its own
/// with the rights, rules and pipelines of its single-write route: one refused write does not
/// undo or stop the others. The answer is `200` with each write's status and record or problem.
#[utoipa::path(post, path = "/api/v1/records:batch", tag = "records",
    request_body = Batch,
    responses((status = 200, description = "Each write's outcome, in order", body = Results),
        (status = 400, description = "Not a batch, more than 500 operations, or an operation without the members it needs (nothing is written)", body = Problem, content_type = "application/problem+json")))]
pub async fn batch(
    services: web::Data<Services>,
    Principal(actor): Principal,
    body: web::Json<Object<Batch>>,
) -> Result<HttpResponse, ApiError> {
    let operations = body.into_inner().0.operations;
    if operations.is_empty() || operations.len() > MAX_OPERATIONS {
        return Err(ApiError::new(
            ErrorCode::InvalidInput,
            format!("a batch has 1-{MAX_OPERATIONS} operations"),
        )
        .with_field("/operations"));
    }
    let writes = operations
        .into_iter()
        .enumerate()
        .map(|(at, operation)| operation.into_write(at))
        .collect::<Result<Vec<_>, _>>()?;
    let engine = services.engine.clone();
    let results = web::block(move || {
        writes
            .into_iter()
            .map(|write| {
                let outcome = match write {
                    Write::Create(record, key) => engine
                        .create(&actor, record, key.as_deref())
                        .map(|c| (201, c.record, c.replayed)),
                    Write::Update(id, patch, if_match) => engine
                        .update(&actor, &id, patch, if_match)
                        .map(|r| (200, r, false)),
                    Write::Transition(id, to, comment, fields, if_match) => engine
                        .transition_with_fields(
                            &actor,
                            &id,
                            &to,
                            comment,
                            if_match,
                            (!fields.is_empty()).then_some(fields),
                        )
                        .map(|r| (200, r, false)),
                };
                match outcome {
                    Ok((status, record, replayed)) => OperationResult {
                        status,
                        record: Some(record),
                        replayed,
                        problem: None,
                    },
                    Err(error) => {
                        let problem = ApiError::from(error).into_problem();
                        OperationResult {
                            status: problem.status,
                            record: None,
                            replayed: false,
                            problem: Some(problem),
                        }
                    }
                }
            })
            .collect::<Vec<_>>()
    })
    .await?;
    Ok(HttpResponse::Ok().json(Results { results }))
}
