//! `/api/v1/people` and `/api/v1/groups`: the directory records are assigned to. Admins of a
//! domain manage its people and groups, agents read them; every change is audited.

use std::collections::BTreeSet;

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use usm_directory::{
    DirectoryError, Group, GroupPatch, MAX_PAGE, NewGroup, NewPerson, Person, PersonPatch,
};
use usm_engine::auth;
use usm_model::{Actor, Domain, ErrorCode};

use crate::{
    Services,
    principal::{Admin, Principal},
    problem::{ApiError, Problem},
};

impl From<DirectoryError> for ApiError {
    fn from(error: DirectoryError) -> Self {
        match &error {
            DirectoryError::Invalid { field, .. } => {
                Self::new(ErrorCode::InvalidInput, error.to_string()).with_field(field.clone())
            }
            DirectoryError::Reference { field, .. } => {
                Self::new(ErrorCode::UnknownReference, error.to_string()).with_field(field.clone())
            }
            DirectoryError::NotFound { what, .. } => {
                let code = if *what == "group" {
                    ErrorCode::GroupNotFound
                } else {
                    ErrorCode::PersonNotFound
                };
                Self::new(code, error.to_string())
            }
            DirectoryError::Taken(_) => {
                Self::new(ErrorCode::DirectoryIdTaken, error.to_string()).with_field("/id")
            }
            DirectoryError::Forbidden(_) => Self::new(ErrorCode::Forbidden, error.to_string()),
            DirectoryError::Store(_) => {
                tracing::error!(%error, "internal error");
                Self::new(
                    ErrorCode::Internal,
                    "the server failed to complete the request; it has been logged",
                )
            }
        }
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, DirectoryError> + Send + 'static,
) -> Result<T, ApiError> {
    Ok(web::block(work).await??)
}

/// Runs a directory change off the async workers and audits what it made.
async fn change<T: Serialize + Send + 'static>(
    services: web::Data<Services>,
    actor: Actor,
    action: &'static str,
    target: fn(&T) -> (String, Option<BTreeSet<Domain>>),
    work: impl FnOnce(&usm_directory::Directory, &Actor) -> Result<T, DirectoryError> + Send + 'static,
) -> Result<T, ApiError> {
    let services = services.into_inner();
    blocking(move || {
        let made = work(services.engine.directory(), &actor)?;
        let (name, scope) = target(&made);
        if let Err(error) = auth::audit(
            services.engine.store().as_ref(),
            &actor,
            action,
            &name,
            scope.as_ref(),
            None,
            serde_json::to_value(&made).ok(),
        ) {
            tracing::error!(%error, action, "cannot write the audit entry");
        }
        Ok(made)
    })
    .await
}

fn person_target(person: &Person) -> (String, Option<BTreeSet<Domain>>) {
    (format!("person:{}", person.id), person.domains.clone())
}

fn group_target(group: &Group) -> (String, Option<BTreeSet<Domain>>) {
    (
        format!("group:{}", group.id),
        Some(BTreeSet::from([group.domain.clone()])),
    )
}

/// A page of people.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PersonPage {
    /// By id.
    pub people: Vec<Person>,
    /// Pass as `after` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// Paging of the people list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PeopleParams {
    /// The last id of the previous page.
    pub after: Option<String>,
    /// Page size, 1–500 (default 100).
    pub limit: Option<usize>,
}

/// Adds a person; an admin of each of the person's domains (a person of every domain: a global
/// admin). The id may not be one another principal (a token's name) already goes by.
#[utoipa::path(post, path = "/api/v1/people", tag = "directory", request_body = NewPerson,
    responses((status = 201, body = Person),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The id is taken", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The manager is not an active person", body = Problem, content_type = "application/problem+json")))]
pub async fn create_person(
    services: web::Data<Services>,
    Admin(actor): Admin,
    body: web::Json<NewPerson>,
) -> Result<HttpResponse, ApiError> {
    let tokens = std::sync::Arc::clone(&services.tokens);
    let person = change(
        services,
        actor,
        "person.create",
        person_target,
        move |directory, actor| {
            directory.create_person(actor, body.into_inner(), |id| tokens.principal_named(id))
        },
    )
    .await?;
    Ok(HttpResponse::Created().json(person))
}

/// Lists the people the caller may read (agents and admins, within their domains), by id.
#[utoipa::path(get, path = "/api/v1/people", tag = "directory", params(PeopleParams),
    responses((status = 200, body = PersonPage), (status = 403, body = Problem, content_type = "application/problem+json")))]
pub async fn list_people(
    services: web::Data<Services>,
    Principal(actor): Principal,
    params: web::Query<PeopleParams>,
) -> Result<HttpResponse, ApiError> {
    let PeopleParams { after, limit } = params.into_inner();
    let limit = limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::new(
            ErrorCode::InvalidInput,
            format!("limit must be 1-{MAX_PAGE}"),
        )
        .with_field("limit"));
    }
    let people = blocking(move || {
        services
            .engine
            .directory()
            .people(&actor, after.as_deref(), limit)
    })
    .await?;
    let next_after = (people.len() == limit)
        .then(|| people.last().map(|p| p.id.clone()))
        .flatten();
    Ok(HttpResponse::Ok().json(PersonPage { people, next_after }))
}

/// One person.
#[utoipa::path(get, path = "/api/v1/people/{id}", tag = "directory", params(("id" = String, Path)),
    responses((status = 200, body = Person), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_person(
    services: web::Data<Services>,
    Principal(actor): Principal,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let person = blocking(move || services.engine.directory().person(&actor, &id)).await?;
    Ok(HttpResponse::Ok().json(person))
}

/// Changes a person (`"active": false` deactivates: their tokens stop working, history stays).
#[utoipa::path(patch, path = "/api/v1/people/{id}", tag = "directory", params(("id" = String, Path)), request_body = PersonPatch,
    responses((status = 200, body = Person),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The manager is not an active person", body = Problem, content_type = "application/problem+json")))]
pub async fn patch_person(
    services: web::Data<Services>,
    Admin(actor): Admin,
    id: web::Path<String>,
    body: web::Json<PersonPatch>,
) -> Result<HttpResponse, ApiError> {
    let person = change(
        services,
        actor,
        "person.update",
        person_target,
        move |directory, actor| directory.update_person(actor, &id, body.into_inner()),
    )
    .await?;
    Ok(HttpResponse::Ok().json(person))
}

/// Deactivates a person: kept with their history, but they no longer act or get assigned.
#[utoipa::path(delete, path = "/api/v1/people/{id}", tag = "directory", params(("id" = String, Path)),
    responses((status = 200, body = Person), (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn delete_person(
    services: web::Data<Services>,
    Admin(actor): Admin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let person = change(
        services,
        actor,
        "person.deactivate",
        person_target,
        move |directory, actor| directory.deactivate_person(actor, &id),
    )
    .await?;
    Ok(HttpResponse::Ok().json(person))
}

/// The groups.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GroupList {
    /// By id.
    pub groups: Vec<Group>,
}

/// Filter of the group list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct GroupParams {
    /// Only this domain's groups.
    pub domain: Option<String>,
}

/// Makes a group in a domain the caller administers; members are active people of the domain.
#[utoipa::path(post, path = "/api/v1/groups", tag = "directory", request_body = NewGroup,
    responses((status = 201, body = Group),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The id is taken", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A member is not an active person of the domain", body = Problem, content_type = "application/problem+json")))]
pub async fn create_group(
    services: web::Data<Services>,
    Admin(actor): Admin,
    body: web::Json<NewGroup>,
) -> Result<HttpResponse, ApiError> {
    let group = change(
        services,
        actor,
        "group.create",
        group_target,
        move |directory, actor| directory.create_group(actor, body.into_inner()),
    )
    .await?;
    Ok(HttpResponse::Created().json(group))
}

/// Lists the groups of the caller's domains.
#[utoipa::path(get, path = "/api/v1/groups", tag = "directory", params(GroupParams),
    responses((status = 200, body = GroupList), (status = 403, body = Problem, content_type = "application/problem+json")))]
pub async fn list_groups(
    services: web::Data<Services>,
    Principal(actor): Principal,
    params: web::Query<GroupParams>,
) -> Result<HttpResponse, ApiError> {
    let domain = params
        .into_inner()
        .domain
        .map(|d| {
            Domain::new(d.as_str()).map_err(|e| {
                ApiError::new(ErrorCode::InvalidInput, e.to_string()).with_field("domain")
            })
        })
        .transpose()?;
    let groups =
        blocking(move || services.engine.directory().groups(&actor, domain.as_ref())).await?;
    Ok(HttpResponse::Ok().json(GroupList { groups }))
}

/// One group.
#[utoipa::path(get, path = "/api/v1/groups/{id}", tag = "directory", params(("id" = String, Path)),
    responses((status = 200, body = Group), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_group(
    services: web::Data<Services>,
    Principal(actor): Principal,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let group = blocking(move || services.engine.directory().group(&actor, &id)).await?;
    Ok(HttpResponse::Ok().json(group))
}

/// Renames a group or replaces its members.
#[utoipa::path(patch, path = "/api/v1/groups/{id}", tag = "directory", params(("id" = String, Path)), request_body = GroupPatch,
    responses((status = 200, body = Group),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn patch_group(
    services: web::Data<Services>,
    Admin(actor): Admin,
    id: web::Path<String>,
    body: web::Json<GroupPatch>,
) -> Result<HttpResponse, ApiError> {
    let group = change(
        services,
        actor,
        "group.update",
        group_target,
        move |directory, actor| directory.update_group(actor, &id, body.into_inner()),
    )
    .await?;
    Ok(HttpResponse::Ok().json(group))
}

/// Removes a group; records that named it keep the name in their history.
#[utoipa::path(delete, path = "/api/v1/groups/{id}", tag = "directory", params(("id" = String, Path)),
    responses((status = 204), (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn delete_group(
    services: web::Data<Services>,
    Admin(actor): Admin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    change(
        services,
        actor,
        "group.delete",
        group_target,
        move |directory, actor| directory.delete_group(actor, &id),
    )
    .await?;
    Ok(HttpResponse::NoContent().finish())
}
