//! [`CausalLayer`] (feature `tower`): read-your-writes across HTTP requests,
//! by carrying the causal token in a header or a cookie.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::causal::lsn::CausalToken;
use crate::causal::scope::causal_scope;

/// The header [`CausalLayer`] reads the token from and writes it to, unless
/// told otherwise.
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub const CAUSAL_TOKEN_HEADER: &str = "x-causal-token";

/// A tower [`Layer`] that serves each request in a
/// [`causal_scope`](crate::causal::causal_scope): reads made while serving it see
/// the writes the client made before (through any instance of the service,
/// if the client sends back what it was given), and the response carries
/// the newest token.
///
/// The token is taken from the request header ([`CAUSAL_TOKEN_HEADER`] by
/// default) or, with [`CausalLayer::cookie`], from that cookie; a token
/// that does not parse is ignored (the request is served as if it had
/// none). If the scope has a token when the response is ready, the
/// response gets it in the same header, and, with a cookie name, as a
/// `Set-Cookie` (`Path=/; HttpOnly; SameSite=Lax`).
///
/// ```
/// # fn demo<S>(service: S) -> pgrouter::causal::CausalService<S> {
/// use tower_layer::Layer;
/// let layer = pgrouter::causal::CausalLayer::new().cookie("pgrouter_token");
/// layer.layer(service)
/// # }
/// ```
///
/// With axum: `Router::new().route(…).layer(CausalLayer::new())`.
#[derive(Debug, Clone)]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub struct CausalLayer {
    header: HeaderName,
    cookie: Option<Arc<str>>,
}

impl Default for CausalLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl CausalLayer {
    /// The token in the [`CAUSAL_TOKEN_HEADER`] header, no cookie.
    pub fn new() -> Self {
        Self {
            header: HeaderName::from_static(CAUSAL_TOKEN_HEADER),
            cookie: None,
        }
    }

    /// Reads and writes the token in this header instead.
    pub fn header(mut self, name: HeaderName) -> Self {
        self.header = name;
        self
    }

    /// Also reads the token from the cookie `name` (when the header is
    /// absent), and sets that cookie on responses.
    pub fn cookie(mut self, name: &str) -> Self {
        self.cookie = Some(Arc::from(name));
        self
    }

    /// The request's token: the header's, else the cookie's.
    fn token_of(&self, headers: &HeaderMap) -> Option<CausalToken> {
        let from_header = headers
            .get(&self.header)
            .and_then(|value| value.to_str().ok());
        let text = from_header.or_else(|| cookie_value(headers, self.cookie.as_deref()?))?;
        match text.parse() {
            Ok(token) => Some(token),
            Err(error) => {
                tracing::debug!(%error, "ignoring a causal token that does not parse");
                None
            }
        }
    }

    /// Puts `token` on the response.
    fn set_token(&self, headers: &mut HeaderMap, token: CausalToken) {
        let text = token.to_string();
        if let Ok(value) = HeaderValue::try_from(text.as_str()) {
            headers.insert(self.header.clone(), value);
        }
        if let Some(name) = &self.cookie {
            let cookie = format!("{name}={text}; Path=/; HttpOnly; SameSite=Lax");
            if let Ok(value) = HeaderValue::try_from(cookie) {
                headers.append(SET_COOKIE, value);
            }
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|line| line.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"'))
}

impl<S> Layer<S> for CausalLayer {
    type Service = CausalService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CausalService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`CausalLayer`] wraps around another.
#[derive(Debug, Clone)]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub struct CausalService<S> {
    inner: S,
    layer: CausalLayer,
}

impl<S, B, R> Service<Request<B>> for CausalService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
    R: 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<R>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let token = self.layer.token_of(request.headers());
        let served = self.inner.call(request);
        let layer = self.layer.clone();
        Box::pin(async move {
            let (response, newest) = causal_scope(token, served).await;
            let mut response = response?;
            if let Some(newest) = newest {
                layer.set_token(response.headers_mut(), newest);
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;
    use crate::causal::lsn::Lsn;
    use crate::causal::scope as causal;

    /// A service that reports the scope's token and advances it to 0/500.
    #[derive(Clone)]
    struct Echo;

    impl Service<Request<()>> for Echo {
        type Response = Response<Option<CausalToken>>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<()>) -> Self::Future {
            Box::pin(async {
                let seen = causal::current();
                causal::advance(CausalToken::on_timeline(1, Lsn(0x500)));
                Ok(Response::new(seen))
            })
        }
    }

    async fn call(layer: &CausalLayer, request: Request<()>) -> Response<Option<CausalToken>> {
        layer.layer(Echo).call(request).await.unwrap()
    }

    #[tokio::test]
    async fn the_token_comes_from_the_header_or_the_cookie_and_goes_back_newer() {
        let layer = CausalLayer::new().cookie("tok");
        let header = Request::builder()
            .header(CAUSAL_TOKEN_HEADER, "1/0/100")
            .body(())
            .unwrap();
        let response = call(&layer, header).await;
        assert_eq!(
            *response.body(),
            Some(CausalToken::on_timeline(1, Lsn(0x100)))
        );
        assert_eq!(response.headers()[CAUSAL_TOKEN_HEADER], "1/0/500");
        assert_eq!(
            response.headers()[SET_COOKIE],
            "tok=1/0/500; Path=/; HttpOnly; SameSite=Lax"
        );

        let cookie = Request::builder()
            .header(COOKIE, "a=b; tok=2/0/10")
            .body(())
            .unwrap();
        let response = call(&layer, cookie).await;
        assert_eq!(
            *response.body(),
            Some(CausalToken::on_timeline(2, Lsn(0x10)))
        );
        // A later timeline stays the newest.
        assert_eq!(response.headers()[CAUSAL_TOKEN_HEADER], "2/0/10");

        for garbage in [
            Request::builder()
                .header(CAUSAL_TOKEN_HEADER, "nonsense")
                .body(())
                .unwrap(),
            Request::builder().body(()).unwrap(),
        ] {
            assert_eq!(*call(&layer, garbage).await.body(), None);
        }
    }
}
