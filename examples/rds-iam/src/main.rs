//! RDS / Aurora IAM database authentication: every new connection logs in
//! with a fresh IAM auth token (a SigV4-signed URL, valid 15 minutes), made
//! by the AWS SDK's RDS auth-token generator and cached by pgrouter for 14.
//!
//! ```sh
//! cargo run -p pgrouter-example-rds-iam
//! ```
//!
//! It reads `WRITER_URL` and (optionally) `READER_URL`, e.g.
//! `postgres://iam_user@writer-1.abc123.eu-west-1.rds.amazonaws.com:5432/app?sslmode=verify-full&sslrootcert=/etc/ssl/rds-global-bundle.pem`,
//! and `WRITER_REGION` / `READER_REGION` (the AWS regions the instances run
//! in: each token is signed for its node's region, set explicitly, since the
//! generator would otherwise sign for `us-east-1` without a word). AWS
//! credentials come from the SDK's usual chain (environment, profile, web
//! identity, ECS, EC2 instance metadata). The database user needs `GRANT
//! rds_iam TO iam_user`. IAM requires TLS: keep `sslmode=verify-full`.
//!
//! This example compiles in CI; it can only run against a real RDS or Aurora
//! instance.

use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_rds::auth_token::{self, AuthTokenGenerator};
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use pgrouter::auth::Credential;
use pgrouter::auth::CredentialFuture;
use pgrouter::auth::CredentialRequest;
use pgrouter::auth::PasswordProvider;
use pgrouter::Config;
use pgrouter::DatabaseManager;

/// Tokens live 15 minutes; reuse one for at most 14, so no connection is
/// opened with a token about to expire. A token the server rejects anyway
/// is replaced once at once (pgrouter refreshes on `28P01`/`28000`).
const TOKEN_REUSE: Duration = Duration::from_secs(14 * 60);

/// Signs an IAM auth token for each node, in that node's region.
struct IamTokens {
    sdk: SdkConfig,
}

impl PasswordProvider for IamTokens {
    fn password<'a>(&'a self, request: &'a CredentialRequest) -> CredentialFuture<'a> {
        Box::pin(async move {
            let host = request.host.clone().ok_or("IAM needs a host name")?;
            let user = request.user.clone().ok_or("IAM needs a user name")?;
            let config = auth_token::Config::builder()
                .hostname(host)
                .port(u64::from(request.port))
                .username(user)
                // The node's own region, never the generator's default.
                .region(Region::new(request.region.clone()))
                .build()?;
            let token = AuthTokenGenerator::new(config)
                .auth_token(&self.sdk)
                .await?;
            // Never log the token: it is a password.
            Ok(Credential::new(token.as_str()).valid_for(TOKEN_REUSE))
        })
    }
}

fn env(name: &str) -> Result<String, Box<dyn std::error::Error>> {
    std::env::var(name).map_err(|_| format!("set {name}").into())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let writer_region = env("WRITER_REGION")?;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(writer_region.clone()))
        .http_client(http)
        .load()
        .await;

    let mut builder = Config::builder()
        .primary("writer", &writer_region, env("WRITER_URL")?)
        .local_region(&writer_region)
        .password_provider(IamTokens { sdk });
    if let (Ok(url), Ok(region)) = (env("READER_URL"), env("READER_REGION")) {
        builder = builder.replica("reader", region, url);
    }
    let db = DatabaseManager::new(builder.build()?).await?;
    let row = db.query_one("SELECT current_user::text", &[]).await?;
    println!("logged in as {}", row.get::<_, &str>(0));
    println!("{:#?}", db.status());
    db.close().await;
    Ok(())
}
