//! The OpenAPI 3 document of the JSON API, served at `/api/v1/openapi.json`.
//! Paths come from the handlers' `#[utoipa::path]` attributes, collected by
//! the same [`super::api::routes`] call that builds the router, so a route
//! cannot be served without being documented; this file adds the title,
//! version and the bearer security scheme.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi;
use utoipa_axum::router::OpenApiRouter;

/// Where the API is mounted (the `/api` alias serves the same routes).
pub const MOUNT: &str = "/api/v1";

/// Title, version, description and the `bearer` security scheme.
pub fn base() -> OpenApi {
    let mut doc = utoipa::openapi::OpenApiBuilder::new()
        .info(
            utoipa::openapi::InfoBuilder::new()
                .title("Sluice API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "History, queue and reload of a Sluice mail gateway. Every route needs \
                     `Authorization: Bearer <[http] token>`; the same routes answer under \
                     /api/ as an alias of /api/v1/.",
                ))
                .build(),
        )
        .build();
    doc.components
        .get_or_insert_with(Default::default)
        .add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    doc
}

/// The whole document, paths under [`MOUNT`].
pub fn document() -> OpenApi {
    OpenApiRouter::<super::Shared>::with_openapi(base())
        .nest(MOUNT, super::api::routes())
        .into_openapi()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_api_route_is_documented() {
        let doc = serde_json::to_value(document()).unwrap();
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
        let mut have: Vec<String> = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if method != "parameters" {
                    have.push(format!("{} {path}", method.to_uppercase()));
                }
            }
        }
        have.sort();
        let mut want = vec![
            "GET /api/v1/history",
            "GET /api/v1/queue",
            "GET /api/v1/queue/stats",
            "GET /api/v1/queue/{id}",
            "POST /api/v1/queue/{id}/{action}",
            "POST /api/v1/queue/hold",
            "POST /api/v1/queue/release",
            "POST /api/v1/queue/retry",
            "POST /api/v1/queue/delete",
            "POST /api/v1/queue/bounce",
            "POST /api/v1/reload",
            "GET /api/v1/openapi.json",
        ];
        want.sort();
        assert_eq!(have, want);
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                assert!(
                    op["security"].as_array().is_some_and(|s| !s.is_empty()),
                    "{method} {path} has no security requirement"
                );
                assert!(
                    op["responses"]["401"].is_object(),
                    "{method} {path} documents no 401"
                );
            }
        }
    }
}
