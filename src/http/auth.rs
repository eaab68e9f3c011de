//! `HEALTHPROBE_HTTP_TOKEN` (DESIGN §16): with a token set, every request that may change
//! something (any method but `GET`, `HEAD` and `OPTIONS`; today `POST /games/{id}/probe`)
//! needs `Authorization: Bearer <token>`, else `401` with a JSON error. Reads stay open.
//! The check runs before routing, so a mutating request learns nothing without the token.

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use subtle::ConstantTimeEq as _;

/// The token mutating requests must carry. Its bytes are compared in constant time.
#[derive(Clone)]
pub struct AccessToken(Arc<[u8]>);

impl AccessToken {
    pub fn new(token: &str) -> Self {
        Self(token.as_bytes().into())
    }

    /// Whether `authorization` is `Bearer <this token>` (the scheme in any case, as
    /// RFC 7235 has it). The comparison takes the same time whichever byte differs; only
    /// the length of a wrong token can show.
    pub(crate) fn admits(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(value) = authorization.map(HeaderValue::as_bytes) else {
            return false;
        };
        let Some((scheme, token)) = value.split_at_checked(7) else {
            return false;
        };
        scheme.eq_ignore_ascii_case(b"bearer ") && bool::from(token.ct_eq(&self.0))
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessToken(..)")
    }
}

/// Whether a request of this method may change something.
fn mutating(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// `router` with its mutating requests guarded by `token`; unchanged without one.
pub fn guard_mutations(router: Router, token: Option<AccessToken>) -> Router {
    match token {
        None => router,
        Some(token) => router.layer(middleware::from_fn(move |request: Request, next: Next| {
            let token = token.clone();
            async move {
                if mutating(request.method())
                    && !token.admits(request.headers().get(header::AUTHORIZATION))
                {
                    return unauthorized();
                }
                next.run(request).await
            }
        })),
    }
}

fn unauthorized() -> Response {
    let mut response = super::error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "this request changes something: it needs Authorization: Bearer <HEALTHPROBE_HTTP_TOKEN>",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"healthprobe\""),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_admitted() {
        let token = AccessToken::new("s3cret-token");
        let admits = |value: &str| token.admits(Some(&HeaderValue::from_str(value).unwrap()));
        assert!(admits("Bearer s3cret-token"));
        assert!(admits("bearer s3cret-token"));
        assert!(!admits("Bearer s3cret-tokeN"));
        assert!(!admits("Bearer s3cret-token "));
        assert!(!admits("Bearer s3cret"));
        assert!(!admits("Basic s3cret-token"));
        assert!(!admits("Bearer"));
        assert!(!admits(""));
        assert!(!token.admits(None));
        assert!(!format!("{token:?}").contains("s3cret"));
    }

    #[test]
    fn reads_are_never_guarded() {
        assert!(!mutating(&Method::GET));
        assert!(!mutating(&Method::HEAD));
        assert!(mutating(&Method::POST));
        assert!(mutating(&Method::DELETE));
        assert!(mutating(&Method::PUT));
    }
}
