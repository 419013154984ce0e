//! Which cloud a cluster lives in: the login authority and the resource its tokens must be for.
//!
//! The SDKs ask the cluster (`GET {cluster}/v1/rest/auth/metadata`: `AzureAD.LoginEndpoint`,
//! `AzureAD.KustoServiceResourceId`, `AzureAD.LoginMfaRequired`) and fall back to the public cloud on 404. Sovereign
//! clouds differ, so nothing here hard-wires a host beyond those defaults; explicit config wins over the answer.

use crate::error::{Error, ErrorKind};

use super::http;
use super::json::{self, Scalar};

/// The public cloud's login authority.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";
/// The public cloud's Kusto resource (scope without `/.default`).
pub const DEFAULT_RESOURCE: &str = "https://kusto.kusto.windows.net";

/// Where tokens come from and what they are for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cloud {
    /// `https://login.microsoftonline.com` or a sovereign cloud's, without a trailing slash.
    pub authority_host: String,
    /// The resource, e.g. `https://kusto.kusto.windows.net`, without `/.default`.
    pub resource: String,
    /// The authority host came from config (`auth.authority_host`): nothing may replace it.
    pub authority_explicit: bool,
}

impl Cloud {
    /// The public cloud.
    pub fn public() -> Cloud {
        Cloud {
            authority_host: DEFAULT_AUTHORITY_HOST.to_owned(),
            resource: DEFAULT_RESOURCE.to_owned(),
            authority_explicit: false,
        }
    }

    /// The OAuth scope: `{resource}/.default`.
    pub fn scope(&self) -> String {
        format!("{}/.default", self.resource)
    }
}

/// Normalises a resource given with or without `/.default` and trailing slash.
pub fn normalize_resource(r: &str) -> String {
    let r = r.trim();
    let r = r.strip_suffix("/.default").unwrap_or(r);
    r.trim_end_matches('/').to_owned()
}

/// What the cloud settings are made of before the metadata is read.
#[derive(Clone, Debug, Default)]
pub struct CloudConfig {
    /// `auth.authority_host`.
    pub authority_host: Option<String>,
    /// `auth.resource`, normalised.
    pub resource: Option<String>,
    /// `auth.metadata`: ask the cluster.
    pub fetch_metadata: bool,
    /// The cluster URL, without a trailing slash.
    pub cluster: Option<String>,
}

impl CloudConfig {
    /// True when the metadata would change nothing or cannot be asked for.
    pub fn needs_fetch(&self) -> bool {
        self.fetch_metadata
            && self.cluster.is_some()
            && (self.authority_host.is_none() || self.resource.is_none())
    }

    /// The cloud from config alone, public-cloud defaults for what is not set.
    pub fn without_metadata(&self) -> Cloud {
        self.merge(None)
    }

    fn merge(&self, meta: Option<Metadata>) -> Cloud {
        let meta = meta.unwrap_or_default();
        let resource = match (&self.resource, meta.resource) {
            (Some(r), _) => r.clone(),
            (None, Some(r)) if meta.mfa => r.replacen(".kusto.", ".kustomfa.", 1),
            (None, Some(r)) => r,
            (None, None) => DEFAULT_RESOURCE.to_owned(),
        };
        Cloud {
            authority_host: self
                .authority_host
                .clone()
                .or(meta.login)
                .unwrap_or_else(|| DEFAULT_AUTHORITY_HOST.to_owned())
                .trim_end_matches('/')
                .to_owned(),
            resource: normalize_resource(&resource),
            authority_explicit: self.authority_host.is_some(),
        }
    }

    /// Asks the cluster for its cloud metadata (once per cache) and merges it under the config.
    pub fn resolve(&self, agent: &ureq::Agent) -> Result<Cloud, Error> {
        let Some(cluster) = self.cluster.as_deref().filter(|_| self.needs_fetch()) else {
            return Ok(self.without_metadata());
        };
        let url = format!("{}/v1/rest/auth/metadata", cluster.trim_end_matches('/'));
        let reply = http::get(agent, &url, &[])?;
        match reply.status {
            200 => {
                let meta = parse_metadata(&reply.body.0).ok_or_else(|| {
                    Error::new(
                        ErrorKind::TargetNotReady,
                        format!("the cluster's auth metadata ({url}) is unreadable: check the url, or set auth.metadata=false with auth.authority_host and auth.resource"),
                    )
                })?;
                Ok(self.merge(Some(meta)))
            }
            // Clusters without the endpoint are in the public cloud: the SDKs' rule.
            404 => Ok(self.merge(None)),
            408 | 429 | 500..=599 => Err(Error::new(
                ErrorKind::TransientFailure,
                format!("the cluster's auth metadata is unavailable (HTTP {}); will retry", reply.status),
            )),
            s => Err(Error::new(
                ErrorKind::TargetNotReady,
                format!("the cluster's auth metadata ({url}) answered HTTP {s}: check the url, or set auth.metadata=false"),
            )),
        }
    }
}

/// The parts of `/v1/rest/auth/metadata` that matter.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    /// `AzureAD.LoginEndpoint`.
    pub login: Option<String>,
    /// `AzureAD.KustoServiceResourceId`.
    pub resource: Option<String>,
    /// `AzureAD.LoginMfaRequired`.
    pub mfa: bool,
}

/// Reads the metadata document; `None` when it is not JSON or names a login endpoint that is not https.
pub fn parse_metadata(body: &[u8]) -> Option<Metadata> {
    let mut m = Metadata::default();
    json::walk(body, |path, v| match (path, v) {
        ("AzureAD.LoginEndpoint", Scalar::Str(s)) => m.login = Some(s),
        ("AzureAD.KustoServiceResourceId", Scalar::Str(s)) => m.resource = Some(s),
        ("AzureAD.LoginMfaRequired", Scalar::Bool(b)) => m.mfa = b,
        _ => {}
    })
    .ok()?;
    // The login endpoint is where secrets go: a cluster (or something posing as one) must not be able to send
    // them over plain http, except to a loopback test endpoint.
    if let Some(l) = &m.login {
        if !matches!(
            http::check_url(l, "LoginEndpoint"),
            Ok(http::Target::Https | http::Target::PlainLoopback)
        ) {
            return None;
        }
    }
    m.login = m.login.map(|l| l.trim_end_matches('/').to_owned());
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUBLIC: &str = r#"{"AzureAD":{"LoginEndpoint":"https://login.microsoftonline.com","LoginMfaRequired":false,"KustoClientAppId":"db662dc1-0cfe-4e1c-a843-19a68e65be58","KustoClientRedirectUri":"https://microsoft/kustoclient","KustoServiceResourceId":"https://kusto.kusto.windows.net","FirstPartyAuthorityUrl":"https://login.microsoftonline.com/f8cdef31-a31e-4b4a-93e4-5f571e91255a"},"dSTS":{"CloudEndpointSuffix":"windows.net","DstsRealm":"realm://dsts.core.windows.net"}}"#;

    #[test]
    fn metadata_is_read_and_mfa_changes_the_resource() {
        let m = parse_metadata(PUBLIC.as_bytes()).unwrap();
        assert_eq!(
            m.login.as_deref(),
            Some("https://login.microsoftonline.com")
        );
        assert_eq!(
            m.resource.as_deref(),
            Some("https://kusto.kusto.windows.net")
        );
        let cfg = CloudConfig::default();
        let sovereign = r#"{"AzureAD":{"LoginEndpoint":"https://login.chinacloudapi.cn/","LoginMfaRequired":true,"KustoServiceResourceId":"https://kusto.kusto.chinacloudapi.cn"}}"#;
        let c = cfg.merge(parse_metadata(sovereign.as_bytes()));
        assert_eq!(c.authority_host, "https://login.chinacloudapi.cn");
        assert_eq!(c.resource, "https://kusto.kustomfa.chinacloudapi.cn");
        assert_eq!(
            c.scope(),
            "https://kusto.kustomfa.chinacloudapi.cn/.default"
        );
    }

    #[test]
    fn explicit_config_wins_over_metadata() {
        let cfg = CloudConfig {
            authority_host: Some("https://login.example/".into()),
            resource: Some(normalize_resource("https://r.example/.default")),
            fetch_metadata: true,
            cluster: Some("https://c.example".into()),
        };
        assert!(!cfg.needs_fetch());
        let c = cfg.merge(parse_metadata(PUBLIC.as_bytes()));
        assert_eq!(c.authority_host, "https://login.example");
        assert_eq!(c.resource, "https://r.example");
        assert!(c.authority_explicit);
    }

    #[test]
    fn defaults_are_the_public_cloud() {
        assert_eq!(CloudConfig::default().without_metadata(), Cloud::public());
    }

    #[test]
    fn a_plain_http_login_endpoint_is_not_believed() {
        assert_eq!(
            parse_metadata(br#"{"AzureAD":{"LoginEndpoint":"http://evil"}}"#),
            None
        );
        assert_eq!(
            parse_metadata(br#"{"AzureAD":{"LoginEndpoint":"http://169.254.169.254"}}"#),
            None
        );
        assert!(parse_metadata(br#"{"AzureAD":{"LoginEndpoint":"http://127.0.0.1:9"}}"#).is_some());
        assert_eq!(parse_metadata(b"not json"), None);
    }
}

#[cfg(test)]
mod wire_tests {
    use super::*;
    use crate::transport::test_server::serve;

    fn cfg(cluster: &str) -> CloudConfig {
        CloudConfig {
            authority_host: None,
            resource: None,
            fetch_metadata: true,
            cluster: Some(cluster.to_owned()),
        }
    }

    #[test]
    fn metadata_404_means_public_cloud_and_200_is_read() {
        let agent = ureq::Agent::new_with_defaults();
        let (base, h) = serve(vec![(404, vec![], String::new())]);
        assert_eq!(cfg(&base).resolve(&agent).unwrap(), Cloud::public());
        assert!(h.join().unwrap()[0].starts_with("GET /v1/rest/auth/metadata HTTP/1.1\r\n"));
        let body = r#"{"AzureAD":{"LoginEndpoint":"https://login.microsoftonline.us","LoginMfaRequired":false,"KustoServiceResourceId":"https://kusto.kusto.usgovcloudapi.net"}}"#;
        let (base, h) = serve(vec![(200, vec![], body.into())]);
        let c = cfg(&base).resolve(&agent).unwrap();
        h.join().unwrap();
        assert_eq!(c.authority_host, "https://login.microsoftonline.us");
        assert_eq!(c.resource, "https://kusto.kusto.usgovcloudapi.net");
        let (base, h) = serve(vec![(503, vec![], String::new())]);
        assert_eq!(
            cfg(&base).resolve(&agent).unwrap_err().kind,
            ErrorKind::TransientFailure
        );
        h.join().unwrap();
    }
}
