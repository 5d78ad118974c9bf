//! `/api/v1/catalog/items…`: the service catalog. Anyone with a role in a domain sees and
//! orders its items; admins of the domain keep them; modules ship read-only ones.

use actix_web::{HttpRequest, HttpResponse, http::header, web};
use serde::Deserialize;
use serde_json::{Map, Value};
use usm_model::{
    ErrorCode, Record,
    service_catalog::{CatalogItem, ItemPatch},
};
use usm_service_catalog::{CatalogError, Order};

use crate::{
    Services,
    body::Object,
    headers::idempotency_key,
    principal::{Admin, Principal},
    problem::{ApiError, Problem},
};

impl From<CatalogError> for ApiError {
    fn from(error: CatalogError) -> Self {
        match error {
            CatalogError::NotFound(_) => {
                Self::new(ErrorCode::CatalogItemNotFound, error.to_string())
            }
            CatalogError::Exists(_) => Self::new(ErrorCode::CatalogItemExists, error.to_string()),
            CatalogError::ReadOnly { .. } => {
                Self::new(ErrorCode::CatalogItemReadOnly, error.to_string())
            }
            CatalogError::Invalid { field, message } => {
                let problem = Self::new(ErrorCode::CatalogItemInvalid, message);
                if field.is_empty() {
                    problem
                } else {
                    problem.with_field(field)
                }
            }
            CatalogError::Unavailable(message) => {
                Self::new(ErrorCode::CatalogItemUnavailable, message)
            }
            CatalogError::Forbidden(message) => Self::new(ErrorCode::Forbidden, message),
            CatalogError::Engine(error) => error.into(),
        }
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, CatalogError> + Send + 'static,
) -> Result<T, ApiError> {
    Ok(web::block(work).await??)
}

/// Which items are listed.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ItemParams {
    /// Only the items of this domain.
    pub domain: Option<String>,
}

/// Catalog items.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ItemList {
    /// By id.
    pub items: Vec<CatalogItem>,
}

/// The items offered in the caller's domains: admins' own and those of enabled modules.
#[utoipa::path(get, path = "/api/v1/catalog/items", tag = "catalog",
    params(ItemParams),
    responses((status = 200, body = ItemList),
        (status = 400, description = "No such domain", body = Problem, content_type = "application/problem+json")))]
pub async fn list_items(
    services: web::Data<Services>,
    Principal(actor): Principal,
    params: web::Query<ItemParams>,
) -> Result<HttpResponse, ApiError> {
    let domain = params
        .into_inner()
        .domain
        .map(|name| crate::headers::known_domain(&services, &name, "domain"))
        .transpose()?;
    let catalog = services.catalog.clone();
    let items = blocking(move || catalog.list(&actor, domain.as_ref())).await?;
    Ok(HttpResponse::Ok().json(ItemList { items }))
}

/// Adds an item to a domain's catalog (an admin of the domain).
#[utoipa::path(post, path = "/api/v1/catalog/items", tag = "catalog",
    request_body = CatalogItem,
    responses((status = 201, body = CatalogItem, headers(("Location" = String))),
        (status = 400, description = "A body that is not an item", body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "An item has the id (`catalog_item_exists`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A member is not acceptable (`catalog_item_invalid`, with `field`)", body = Problem, content_type = "application/problem+json")))]
pub async fn create_item(
    services: web::Data<Services>,
    Admin(actor): Admin,
    body: web::Json<Object<CatalogItem>>,
) -> Result<HttpResponse, ApiError> {
    let catalog = services.catalog.clone();
    let item = blocking(move || catalog.create(&actor, body.into_inner().0)).await?;
    Ok(HttpResponse::Created()
        .insert_header((
            header::LOCATION,
            format!("/api/v1/catalog/items/{}", item.id),
        ))
        .json(item))
}

/// One item offered in the caller's domains.
#[utoipa::path(get, path = "/api/v1/catalog/items/{id}", tag = "catalog",
    params(("id" = String, Path, description = "e.g. `laptop`, or `hr.onboarding` for a module's")),
    responses((status = 200, body = CatalogItem),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_item(
    services: web::Data<Services>,
    Principal(actor): Principal,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let catalog = services.catalog.clone();
    let item = blocking(move || catalog.get(&actor, &id)).await?;
    Ok(HttpResponse::Ok().json(item))
}

/// Changes an item: each member given replaces the item's. Orders already made keep the plan
/// they were made with.
#[utoipa::path(patch, path = "/api/v1/catalog/items/{id}", tag = "catalog",
    params(("id" = String, Path)),
    request_body = ItemPatch,
    responses((status = 200, body = CatalogItem),
        (status = 400, description = "A body that is not a change of an item", body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A module's item (`catalog_item_read_only`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The result is not acceptable (`catalog_item_invalid`, with `field`)", body = Problem, content_type = "application/problem+json")))]
pub async fn patch_item(
    services: web::Data<Services>,
    Admin(actor): Admin,
    id: web::Path<String>,
    body: web::Json<Object<ItemPatch>>,
) -> Result<HttpResponse, ApiError> {
    let catalog = services.catalog.clone();
    let item = blocking(move || catalog.update(&actor, &id, body.into_inner().0)).await?;
    Ok(HttpResponse::Ok().json(item))
}

/// Removes an item (an admin of its domain).
#[utoipa::path(delete, path = "/api/v1/catalog/items/{id}", tag = "catalog",
    params(("id" = String, Path)),
    responses((status = 204, description = "Removed"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A module's item (`catalog_item_read_only`)", body = Problem, content_type = "application/problem+json")))]
pub async fn delete_item(
    services: web::Data<Services>,
    Admin(actor): Admin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let catalog = services.catalog.clone();
    blocking(move || catalog.delete(&actor, &id)).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// An order of a catalog item.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    /// The answers to the item's form.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub variables: Map<String, Value>,
    /// The person the order is for (agents only; a requester orders for themself).
    #[serde(default)]
    pub on_behalf_of: Option<String>,
}

/// Orders an item: a `request` record whose variables match the item's form. Its approvers
/// (the manager of the person it is for, or a group) are asked by mail; once approved, its
/// fulfilment tasks are created in their domains and groups, and it is fulfilled when they
/// are all finished. A rejection cancels it with the reason.
#[utoipa::path(post, path = "/api/v1/catalog/items/{id}/order", tag = "catalog",
    params(("id" = String, Path),
        ("Idempotency-Key" = Option<String>, Header,
            description = "Makes retries safe: a repeat with the same key and body returns the first request")),
    request_body = OrderRequest,
    responses(
        (status = 201, description = "Ordered (or replayed, with `Idempotent-Replayed: true`)", body = Record,
            headers(("ETag" = String), ("Location" = String))),
        (status = 400, description = "A body that is not an order", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Ordering for someone else needs the agent role", body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "No approver or fulfilment group to be found (`catalog_item_unavailable`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Variables that do not match the form (`invalid_fields`, `field` under `/variables`), an unknown `on_behalf_of`, or a reused key", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Overloaded; retry after `Retry-After`", body = Problem, content_type = "application/problem+json")))]
pub async fn order_item(
    services: web::Data<Services>,
    Principal(actor): Principal,
    request: HttpRequest,
    id: web::Path<String>,
    body: web::Json<Object<OrderRequest>>,
) -> Result<HttpResponse, ApiError> {
    let key = idempotency_key(&request)?;
    let OrderRequest {
        variables,
        on_behalf_of,
    } = body.into_inner().0;
    let catalog = services.catalog.clone();
    let order = Order {
        variables,
        on_behalf_of,
    };
    let created = blocking(move || catalog.order(&actor, &id, order, key.as_deref())).await?;
    Ok(crate::headers::created_response(&created))
}
