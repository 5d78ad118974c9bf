//! The requester portal: the catalog, order forms from each item's schema, and the caller's
//! own requests.

use actix_web::{HttpRequest, HttpResponse, web};
use minijinja::context;
use usm_api::{ApiError, ListParams, Services};
use usm_service_catalog::Order;

use crate::{
    form,
    render::{Refusal, see_other, value_of},
    signin::{Visitor, checked_form, page_for},
};

/// `GET /ui/portal`: what the caller may order, and the caller's requests.
pub async fn portal(
    services: web::Data<Services>,
    visitor: Visitor,
) -> Result<HttpResponse, Refusal> {
    let actor = visitor.actor.clone();
    let services = services.into_inner();
    let (items, mine) = web::block(move || -> Result<_, Refusal> {
        let items = services
            .catalog
            .list(&actor, None)
            .map_err(ApiError::from)?;
        let params: ListParams = serde_json::from_value(serde_json::json!({
            "requester": "me", "sort": "-updated_at", "limit": 50
        }))
        .map_err(|error| Refusal::BadForm(error.to_string()))?;
        let mine = usm_api::list_page(&services, &actor, params)?;
        Ok((items, mine.records))
    })
    .await
    .map_err(ApiError::from)??;
    page_for(
        &visitor,
        "portal.html",
        context! { items => value_of(&items), records => value_of(&mine) },
    )
}

/// `GET /ui/portal/items/{id}`: an item's order form.
pub async fn item(
    services: web::Data<Services>,
    visitor: Visitor,
    id: web::Path<String>,
) -> Result<HttpResponse, Refusal> {
    let (catalog, actor) = (services.catalog.clone(), visitor.actor.clone());
    let item = web::block(move || catalog.get(&actor, &id))
        .await
        .map_err(ApiError::from)?
        .map_err(ApiError::from)?;
    let fields = form::fields_of(&item.form, |_| true);
    page_for(
        &visitor,
        "item.html",
        context! { item => value_of(&item), fields => value_of(&fields) },
    )
}

/// `POST /ui/portal/items/{id}`: orders the item with the form's variables.
pub async fn order(
    services: web::Data<Services>,
    visitor: Visitor,
    request: HttpRequest,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, Refusal> {
    let form_body = checked_form(&request, &visitor, &body)?;
    let (catalog, actor) = (services.catalog.clone(), visitor.actor.clone());
    let created = web::block(move || -> Result<_, Refusal> {
        let item = catalog.get(&actor, &id).map_err(ApiError::from)?;
        let fields = form::fields_of(&item.form, |_| true);
        let variables = form::values_of(&form_body, &fields)?;
        catalog
            .order(
                &actor,
                &id,
                Order {
                    variables,
                    on_behalf_of: None,
                },
                None,
            )
            .map_err(|error| Refusal::Api(error.into()))
    })
    .await
    .map_err(ApiError::from)??;
    Ok(see_other(&format!("/ui/records/{}", created.record.id)))
}
