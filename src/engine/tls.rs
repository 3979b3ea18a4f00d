//! TLS for every client of the process (S3, origin, mirror reads, peers): rustls on the ring
//! crypto provider, one provider in the build, so no C build of aws-lc.

/// Makes ring the process's default rustls provider (what reqwest and hyper-rustls use).
/// Idempotent; the first call wins.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The HTTPS client the S3 SDK uses: the SDK's default client (hyper 1, rustls, proxy
/// settings from `HTTPS_PROXY`/`NO_PROXY`), on ring instead of aws-lc.
pub fn sdk_https_client() -> aws_sdk_s3::config::SharedHttpClient {
    use aws_smithy_http_client::proxy::ProxyConfig;
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    use aws_smithy_http_client::{Builder, ConnectorBuilder};
    Builder::new().build_with_connector_fn(move |settings, components| {
        let mut conn = ConnectorBuilder::default().tls_provider(Provider::Rustls(CryptoMode::Ring));
        conn.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            conn.set_sleep_impl(components.sleep_impl());
        }
        conn.set_proxy_config(Some(ProxyConfig::from_env()));
        conn.build()
    })
}
