//! Authentication and authorization: every refusal of `--auth jwt`, over WebSocket and REST.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use beacon::config::AuthMode;
use common::{Client, TestServer};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};

const SECRET: &str = "test-secret-that-is-long-enough-for-hs256";
const RSA_PEM: &[u8] = include_bytes!("fixtures/rsa-test-key.pem");

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims of a valid token, expiring in `ttl` seconds.
fn claims(sub: &str, groups: &[&str], role: &str, ttl: i64) -> Value {
    json!({"sub": sub, "groups": groups, "role": role, "exp": now_secs() + ttl})
}

fn hs256(claims: &Value) -> String {
    sign_hs256(claims, SECRET)
}

fn sign_hs256(claims: &Value, secret: &str) -> String {
    let key = EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).unwrap()
}

fn signed(claims: &Value, alg: Algorithm, kid: &str, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// A server with `--auth jwt`, the test secret, and no leeway.
async fn jwt_server(adjust: impl FnOnce(&mut beacon::Config)) -> TestServer {
    TestServer::with(|c| {
        c.auth.mode = AuthMode::Jwt;
        c.auth.jwt_secret = Some(SECRET.into());
        c.auth.jwt_leeway_secs = 0;
        adjust(c);
    })
    .await
}

/// Opens `/v1/ws?query` with `headers`.
async fn connect(
    server: &TestServer,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<Client, tungstenite::Error> {
    let mut request = server.ws_url(query).into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let (ws, _) = tokio_tungstenite::connect_async(request).await?;
    Ok(Client {
        ws,
        msgpack: false,
        negotiated: None,
    })
}

async fn connect_bearer(server: &TestServer, token: &str) -> Result<Client, tungstenite::Error> {
    connect(server, "", &[("authorization", &format!("Bearer {token}"))]).await
}

/// The HTTP status of a refused upgrade, and its JSON body.
fn refusal(result: Result<Client, tungstenite::Error>) -> (u16, Value) {
    match result {
        Ok(_) => panic!("the upgrade was accepted"),
        Err(tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            (response.status().as_u16(), body)
        }
        Err(other) => panic!("not an HTTP refusal: {other}"),
    }
}

async fn rest(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new().request(method, server.http(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn refused_metric(server: &TestServer, reason: &str) -> f64 {
    server
        .metric(&format!("beacon_auth_refused_total{{reason=\"{reason}\"}}"))
        .await
}

#[tokio::test]
async fn a_valid_token_by_header_or_query_gets_in_as_its_claims() {
    let server = jwt_server(|_| {}).await;
    let token = hs256(&claims("bus-1", &["fleet"], "device", 600));
    // The query's identity is ignored once tokens are on.
    let mut c = connect(
        &server,
        "id=someone-else&groups=other",
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
    .unwrap();
    let welcome = c.expect("welcome").await;
    assert_eq!(welcome["id"], "bus-1");
    assert_eq!(welcome["groups"], json!(["fleet"]));
    c.expect("snapshot").await;

    let viewer = hs256(&claims("map", &["fleet"], "viewer", 600));
    let mut v = connect(&server, &format!("access_token={viewer}"), &[])
        .await
        .unwrap();
    assert_eq!(v.expect("welcome").await["role"], "viewer");
    v.expect("snapshot").await;
    c.pos(1.0, 2.0).await;
    assert_eq!(v.until_update(|u| u["id"] == "bus-1").await["lat"], 1.0);

    let (status, body) = rest(
        &server,
        reqwest::Method::GET,
        "/v1/groups/fleet/positions",
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["devices"][0]["id"], "bus-1");
    server.stop().await;
}

#[tokio::test]
async fn a_missing_token_is_refused_with_401() {
    let server = jwt_server(|_| {}).await;
    let (status, body) = refusal(connect(&server, "id=bus-1&groups=fleet", &[]).await);
    assert_eq!(status, 401);
    assert_eq!(body["error"], "unauthorized");
    let (status, _) = rest(
        &server,
        reqwest::Method::POST,
        "/v1/positions?id=bus-1&groups=fleet",
        None,
        Some(r#"{"lat":1,"lon":2}"#),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = rest(
        &server,
        reqwest::Method::GET,
        "/v1/groups/fleet/positions",
        None,
        None,
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(refused_metric(&server, "missing").await, 3.0);
    server.stop().await;
}

#[tokio::test]
async fn a_malformed_token_is_refused_with_401() {
    let server = jwt_server(|_| {}).await;
    for token in [
        "not-a-jwt",
        "a.b.c",
        "eyJhbGciOiJIUzI1NiJ9.e30",
        &"x".repeat(9000),
    ] {
        let (status, _) = refusal(connect_bearer(&server, token).await);
        assert_eq!(status, 401, "{token:.20}");
    }
    let (status, _) = refusal(connect(&server, "", &[("authorization", "Token abc")]).await);
    assert_eq!(status, 401);
    assert_eq!(refused_metric(&server, "malformed").await, 5.0);
    server.stop().await;
}

#[tokio::test]
async fn a_badly_signed_token_is_refused_with_401() {
    let server = jwt_server(|_| {}).await;
    let claims = claims("bus-1", &["fleet"], "device", 600);
    let other_secret = sign_hs256(&claims, "another-secret-that-is-long-enough-too!");
    let (status, body) = refusal(connect_bearer(&server, &other_secret).await);
    assert_eq!(status, 401);
    assert!(
        body["message"].as_str().unwrap().contains("signature"),
        "{body}"
    );

    // A valid token whose claims were swapped for more rights.
    let good = hs256(&claims);
    let (header, rest) = good.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    let greedy = {
        use base64::Engine;
        let more = json!({"sub": "bus-1", "groups": ["fleet", "vip"], "exp": now_secs() + 600});
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(more.to_string())
    };
    let tampered = format!("{header}.{greedy}.{signature}");
    let (status, _) = refusal(connect_bearer(&server, &tampered).await);
    assert_eq!(status, 401);
    assert_eq!(refused_metric(&server, "bad_signature").await, 2.0);
    server.stop().await;
}

#[tokio::test]
async fn an_expired_token_is_refused_with_401() {
    let server = jwt_server(|_| {}).await;
    let token = hs256(&claims("bus-1", &["fleet"], "device", -5));
    let (status, body) = refusal(connect_bearer(&server, &token).await);
    assert_eq!(status, 401);
    assert!(
        body["message"].as_str().unwrap().contains("expired"),
        "{body}"
    );
    assert_eq!(refused_metric(&server, "expired").await, 1.0);
    server.stop().await;
}

#[tokio::test]
async fn a_token_from_another_issuer_is_refused_with_401() {
    let server = jwt_server(|c| c.auth.jwt_issuer = Some("https://idp.example".into())).await;
    let mut claims = claims("bus-1", &["fleet"], "device", 600);
    let (status, _) = refusal(connect_bearer(&server, &hs256(&claims)).await);
    assert_eq!(status, 401, "no iss at all");
    claims["iss"] = json!("https://evil.example");
    let (status, _) = refusal(connect_bearer(&server, &hs256(&claims)).await);
    assert_eq!(status, 401, "another iss");
    assert_eq!(refused_metric(&server, "issuer").await, 2.0);
    claims["iss"] = json!("https://idp.example");
    connect_bearer(&server, &hs256(&claims)).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_token_for_another_audience_is_refused_with_401() {
    let server = jwt_server(|c| c.auth.jwt_audience = Some("beacon".into())).await;
    let mut claims = claims("bus-1", &["fleet"], "device", 600);
    claims["aud"] = json!(["other-app"]);
    let (status, _) = refusal(connect_bearer(&server, &hs256(&claims)).await);
    assert_eq!(status, 401);
    assert_eq!(refused_metric(&server, "audience").await, 1.0);
    claims["aud"] = json!(["other-app", "beacon"]);
    connect_bearer(&server, &hs256(&claims)).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_role_beacon_does_not_know_is_refused_with_403() {
    let server = jwt_server(|_| {}).await;
    let token = hs256(&claims("root", &["fleet"], "superuser", 600));
    let (status, body) = refusal(connect_bearer(&server, &token).await);
    assert_eq!(status, 403, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn groups_outside_the_token_are_forbidden() {
    let server = jwt_server(|_| {}).await;
    let token = hs256(&claims("map", &["fleet"], "viewer", 600));
    let mut v = connect_bearer(&server, &token).await.unwrap();
    v.skip_greeting(1).await;
    v.send(json!({"type": "sub", "group": "other"})).await;
    let error = v.expect("error").await;
    assert_eq!(error["code"], "forbidden");
    v.sync().await;

    let get = |path: &'static str, token: String| {
        let server = &server;
        async move { rest(server, reqwest::Method::GET, path, Some(&token), None).await }
    };
    let (status, body) = get("/v1/groups/other/positions", token.clone()).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "forbidden");
    let (status, _) = get("/v1/groups/fleet/positions", token.clone()).await;
    assert_eq!(status, 200);
    // A device publishes only to its own groups, whatever the query says.
    let device = hs256(&claims("bus-1", &["fleet"], "device", 600));
    let (status, _) = rest(
        &server,
        reqwest::Method::POST,
        "/v1/positions?groups=other",
        Some(&device),
        Some(r#"{"lat":5,"lon":6}"#),
    )
    .await;
    assert_eq!(status, 200);
    let (_, other) = get(
        "/v1/groups/other/positions",
        hs256(&claims("m", &["other"], "viewer", 60)),
    )
    .await;
    assert_eq!(other["devices"], json!([]));
    server.stop().await;
}

#[tokio::test]
async fn a_viewer_may_not_publish() {
    let server = jwt_server(|_| {}).await;
    let token = hs256(&claims("map", &["fleet"], "viewer", 600));
    let mut v = connect_bearer(&server, &token).await.unwrap();
    v.skip_greeting(1).await;
    v.send(json!({"type": "pos", "lat": 1, "lon": 2, "seq": 7}))
        .await;
    let error = v.expect("error").await;
    assert_eq!(error["code"], "forbidden");
    assert_eq!(error["seq"], 7);
    let (status, body) = rest(
        &server,
        reqwest::Method::POST,
        "/v1/positions",
        Some(&token),
        Some(r#"{"lat":1,"lon":2}"#),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (_, snapshot) = rest(
        &server,
        reqwest::Method::GET,
        "/v1/groups/fleet/positions",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(snapshot["devices"], json!([]), "nothing was published");
    server.stop().await;
}

#[tokio::test]
async fn a_token_that_expires_while_connected_closes_the_socket_with_1008() {
    let server = jwt_server(|_| {}).await;
    let token = hs256(&claims("bus-1", &["fleet"], "device", 2));
    let mut c = connect_bearer(&server, &token).await.unwrap();
    c.skip_greeting(1).await;
    assert_eq!(c.expect_close().await, Some(1008));
    assert_eq!(
        server
            .metric("beacon_policy_closes_total{reason=\"expired\"}")
            .await,
        1.0
    );
    server.stop().await;
}

#[tokio::test]
async fn a_token_minted_by_beacon_token_is_accepted() {
    let server = jwt_server(|_| {}).await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_beacon"))
        .args([
            "token",
            "--sub",
            "van-2",
            "--groups",
            "fleet,depot",
            "--role",
            "viewer",
        ])
        .args(["--ttl", "10m"])
        .env("BEACON_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let token = String::from_utf8(output.stdout).unwrap();
    let mut c = connect_bearer(&server, token.trim()).await.unwrap();
    let welcome = c.expect("welcome").await;
    assert_eq!(welcome["id"], "van-2");
    assert_eq!(welcome["role"], "viewer");
    assert_eq!(welcome["groups"], json!(["fleet", "depot"]));
    server.stop().await;
}

#[tokio::test]
async fn basic_credentials_carry_a_token_for_apps_without_bearer_support() {
    use base64::Engine;
    let server = jwt_server(|_| {}).await;
    let token = hs256(&claims("phone-1", &["family"], "device", 600));
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("phone-1:{token}"));
    let (status, body) = reqwest::Client::new()
        .post(server.http("/v1/positions"))
        .header("authorization", format!("Basic {basic}"))
        .body(r#"{"lat":1,"lon":2}"#)
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))
        .unwrap();
    assert_eq!(status, 200, "{:?}", body.text().await);
    server.stop().await;
}

#[tokio::test]
async fn browser_origins_are_checked_on_upgrade_and_cors_follows_the_list() {
    let server = jwt_server(|c| c.auth.allowed_origins = vec!["https://map.example".into()]).await;
    let token = hs256(&claims("map", &["fleet"], "viewer", 600));
    let auth = format!("Bearer {token}");
    let (status, _) = refusal(
        connect(
            &server,
            "",
            &[("authorization", &auth), ("origin", "https://evil.example")],
        )
        .await,
    );
    assert_eq!(status, 403);
    assert_eq!(refused_metric(&server, "origin").await, 1.0);
    connect(
        &server,
        "",
        &[("authorization", &auth), ("origin", "https://map.example")],
    )
    .await
    .unwrap();

    // CORS: the listed origin may read REST answers, another may not.
    let preflight = |origin: &'static str| {
        reqwest::Client::new()
            .request(
                reqwest::Method::OPTIONS,
                server.http("/v1/groups/fleet/positions"),
            )
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let ok = preflight("https://map.example").await.unwrap();
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://map.example"
    );
    let evil = preflight("https://evil.example").await.unwrap();
    assert_eq!(evil.status(), 403);
    assert!(evil.headers().get("access-control-allow-origin").is_none());
    server.stop().await;
}

#[tokio::test]
async fn without_a_list_only_same_origin_browsers_get_in() {
    // --auth none on loopback: the case a foreign page would exploit from a visitor's browser.
    let server = TestServer::start().await;
    let query = "id=map&groups=g&role=viewer";
    let (status, _) = refusal(connect(&server, query, &[("origin", "https://evil.example")]).await);
    assert_eq!(status, 403);
    let own = format!("http://{}", server.addr);
    connect(&server, query, &[("origin", &own)]).await.unwrap();
    connect(&server, query, &[]).await.unwrap();
    // A cross-site POST (a form needs no preflight) is refused too.
    let response = reqwest::Client::new()
        .post(server.http("/v1/positions?id=x"))
        .header("origin", "https://evil.example")
        .header("content-type", "text/plain")
        .body(r#"{"lat":1,"lon":2}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    // DNS rebinding: a foreign name pointed at 127.0.0.1 reads as same-origin, but its Host
    // header gives it away.
    let rebound = reqwest::Client::new()
        .get(server.http("/v1/groups/g/positions"))
        .header(
            "host",
            format!("rebind.evil.example:{}", server.addr.port()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 403);
    let by_name = reqwest::Client::new()
        .get(server.http("/v1/groups/g/positions"))
        .header("host", format!("localhost:{}", server.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(by_name.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn auth_none_refuses_a_public_address_unless_insecure() {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let config = beacon::Config::default();
    let error = beacon::serve(listener, config, async {}).await.unwrap_err();
    assert!(error.to_string().contains("--insecure"), "{error}");

    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let mut config = beacon::Config::default();
    config.auth.insecure = true;
    beacon::serve(listener, config, async {}).await.unwrap();
}

#[tokio::test]
async fn jwt_mode_refuses_to_start_without_a_usable_key() {
    let listener = || tokio::net::TcpListener::bind("127.0.0.1:0");
    let mut config = beacon::Config::default();
    config.auth.mode = AuthMode::Jwt;
    let error = beacon::serve(listener().await.unwrap(), config.clone(), async {})
        .await
        .unwrap_err();
    assert!(error.to_string().contains("--jwt-secret"), "{error}");
    config.auth.jwt_secret = Some("short".into());
    let error = beacon::serve(listener().await.unwrap(), config.clone(), async {})
        .await
        .unwrap_err();
    assert!(error.to_string().contains("32 bytes"), "{error}");
    config.auth.jwt_secret = None;
    config.auth.jwks_file = Some("/nonexistent/jwks.json".into());
    let error = beacon::serve(listener().await.unwrap(), config, async {})
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("/nonexistent/jwks.json"),
        "{error}"
    );
}

// ---- RS256 and ES256 against a JSON Web Key Set ----

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_PEM).unwrap()
}

/// A fresh P-256 key (generated per test: nothing secret is checked in).
fn ec_key() -> EncodingKey {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    EncodingKey::from_ec_der(&pair.serialize_der())
}

fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(key, alg).unwrap();
    jwk.common.key_id = Some(kid.into());
    jwk
}

/// A key-set server on 127.0.0.1:0 whose document can be changed, counting its fetches.
struct JwksServer {
    url: String,
    set: Arc<Mutex<JwkSet>>,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(keys: Vec<Jwk>) -> Self {
        let set = Arc::new(Mutex::new(JwkSet { keys }));
        let fetches = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get({
                let (set, fetches) = (set.clone(), fetches.clone());
                move || async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    axum::Json(serde_json::to_value(&*set.lock().unwrap()).unwrap())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        JwksServer {
            url,
            set,
            fetches,
            task,
        }
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let path = std::env::temp_dir().join(format!("beacon-test-{}-{n}-{name}", std::process::id()));
    std::fs::write(&path, contents).unwrap();
    path
}

#[tokio::test]
async fn rs256_and_es256_tokens_verify_against_a_jwks_file() {
    let (rsa, ec) = (rsa_key(), ec_key());
    let set = JwkSet {
        keys: vec![
            jwk(&rsa, Algorithm::RS256, "rsa-1"),
            jwk(&ec, Algorithm::ES256, "ec-1"),
        ],
    };
    let path = temp_file("jwks.json", &serde_json::to_string(&set).unwrap());
    let server = TestServer::with(|c| {
        c.auth.mode = AuthMode::Jwt;
        c.auth.jwks_file = Some(path.clone());
        c.auth.jwt_leeway_secs = 0;
    })
    .await;
    let claims = claims("bus-1", &["fleet"], "device", 600);
    for token in [
        signed(&claims, Algorithm::RS256, "rsa-1", &rsa),
        signed(&claims, Algorithm::ES256, "ec-1", &ec),
    ] {
        let mut c = connect_bearer(&server, &token).await.unwrap();
        assert_eq!(c.expect("welcome").await["id"], "bus-1");
    }
    // Signed by the right key type but another key; a kid pointing at a key of another
    // algorithm; an HS256 token while no secret is configured.
    let stranger = signed(&claims, Algorithm::ES256, "ec-1", &ec_key());
    let wrong_alg = signed(&claims, Algorithm::RS256, "ec-1", &rsa);
    for (token, reason) in [
        (stranger, "bad_signature"),
        (wrong_alg, "algorithm"),
        (hs256(&claims), "algorithm"),
    ] {
        let before = refused_metric(&server, reason).await;
        let (status, body) = refusal(connect_bearer(&server, &token).await);
        assert_eq!(status, 401, "{body}");
        assert_eq!(
            refused_metric(&server, reason).await,
            before + 1.0,
            "{body}"
        );
    }
    server.stop().await;
    std::fs::remove_file(path).unwrap();
}

#[tokio::test]
async fn an_unknown_kid_is_refused_after_one_bounded_refresh() {
    let ec = ec_key();
    let jwks = JwksServer::start(vec![jwk(&ec, Algorithm::ES256, "ec-1")]).await;
    let server = TestServer::with(|c| {
        c.auth.mode = AuthMode::Jwt;
        c.auth.jwks_url = Some(jwks.url.clone());
        c.auth.jwks_min_refresh_secs = 3600;
    })
    .await;
    let claims = claims("bus-1", &["fleet"], "device", 600);
    connect_bearer(&server, &signed(&claims, Algorithm::ES256, "ec-1", &ec))
        .await
        .unwrap();
    assert_eq!(
        jwks.fetches(),
        1,
        "loaded once at start; a known kid needs no fetch"
    );

    let (status, body) =
        refusal(connect_bearer(&server, &signed(&claims, Algorithm::ES256, "ec-9", &ec)).await);
    assert_eq!(status, 401);
    assert!(
        body["message"].as_str().unwrap().contains("unknown"),
        "{body}"
    );
    assert_eq!(jwks.fetches(), 2, "one re-read for the unknown kid");
    for kid in ["ec-10", "ec-11", "ec-12"] {
        let (status, _) =
            refusal(connect_bearer(&server, &signed(&claims, Algorithm::ES256, kid, &ec)).await);
        assert_eq!(status, 401);
    }
    assert_eq!(jwks.fetches(), 2, "re-reads are rate-limited");
    assert_eq!(refused_metric(&server, "unknown_kid").await, 4.0);
    server.stop().await;
}

#[tokio::test]
async fn a_rotated_key_is_picked_up_by_its_kid() {
    let (old, new) = (ec_key(), ec_key());
    let jwks = JwksServer::start(vec![jwk(&old, Algorithm::ES256, "2026-01")]).await;
    let server = TestServer::with(|c| {
        c.auth.mode = AuthMode::Jwt;
        c.auth.jwks_url = Some(jwks.url.clone());
        c.auth.jwks_min_refresh_secs = 0;
    })
    .await;
    let claims = claims("bus-1", &["fleet"], "device", 600);
    let token = signed(&claims, Algorithm::ES256, "2026-02", &new);
    refusal(connect_bearer(&server, &token).await);
    // The provider publishes the new key: the next token naming it gets in.
    jwks.set
        .lock()
        .unwrap()
        .keys
        .push(jwk(&new, Algorithm::ES256, "2026-02"));
    let mut c = connect_bearer(&server, &token).await.unwrap();
    assert_eq!(c.expect("welcome").await["id"], "bus-1");
    server.stop().await;
}

#[tokio::test]
async fn a_jwks_url_must_be_https_unless_loopback() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = beacon::Config::default();
    config.auth.mode = AuthMode::Jwt;
    config.auth.jwks_url = Some("http://idp.example/jwks.json".into());
    let error = beacon::serve(listener, config, async {}).await.unwrap_err();
    assert!(error.to_string().contains("https"), "{error}");
}
