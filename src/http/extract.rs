//! The REST routes' extractors: what axum's own refuse with plain text becomes the
//! GraphQL-shaped error every other answer of these routes carries.

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::AppError;

/// The query string read as `T`; one that does not read (a parameter given twice)
/// is a 400 that says why.
pub struct QueryOf<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryOf<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(AppError::bad_input(format!(
                "the query string does not read: {}",
                rejection.body_text()
            ))),
        }
    }
}

/// The route's one path parameter; one that does not decode (not UTF-8) names
/// nothing stored: 404. Any other refusal is a route of ours that is wrong: 500.
pub struct PathOf(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathOf {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(PathRejection::FailedToDeserializePathParams(_)) => Err(AppError::not_found()),
            Err(other) => Err(AppError::Internal(anyhow::anyhow!(
                "a route's path parameter: {}",
                other.body_text()
            ))),
        }
    }
}
