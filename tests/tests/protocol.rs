//! Bad input at the protocol level: a client without a broker-issued
//! certificate, and malformed frames. The broker names each problem and
//! keeps serving.

use cpushare_proto::client::{self, Home};
use cpushare_proto::frame;
use cpushare_proto::identity;
use cpushare_proto::msg::{Request, Response};
use cpushare_tests::{Broker, Buyer};

fn endpoints(broker: &Broker) -> serde_json::Value {
    let text = std::fs::read_to_string(broker.data.path().join("endpoints.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn a_client_without_a_broker_issued_certificate_is_refused_at_the_handshake() {
    let broker = Broker::start(None);
    let ca = identity::read_cert(&broker.data.path().join("ca.pem")).unwrap();
    let addr = client::resolve(endpoints(&broker)["broker"].as_str().unwrap()).unwrap();
    let cfg = identity::anonymous_client_config(&ca).unwrap();
    // TLS 1.3 lets the client finish its half before the server checks the
    // client's certificate, so the refusal may surface on the first use.
    let refused = match client::connect(addr, cfg).await {
        Err(e) => e.to_string(),
        Ok(conn) => client::call_on(&conn, &Request::Whoami)
            .await
            .expect_err("an anonymous client must not be served")
            .to_string(),
    };
    assert!(!refused.is_empty());

    // A certificate from another CA is refused the same way.
    let other = identity::Ca::generate().unwrap();
    let (key, csr) = identity::new_key_and_csr("mallory").unwrap();
    let cert = other
        .sign_csr(&csr, "mallory", cpushare_proto::msg::Role::Buyer)
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let cfg = identity::client_config(&ca, vec![cert], key).unwrap();
    let outcome = match client::connect(addr, cfg).await {
        Err(_) => true,
        Ok(conn) => client::call_on(&conn, &Request::Whoami).await.is_err(),
    };
    assert!(outcome, "a certificate from a foreign CA must be refused");
}

async fn raw(conn: &quinn::Connection, bytes: &[u8]) -> Response {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    send.finish().unwrap();
    frame::read::<Response, _>(&mut recv)
        .await
        .unwrap()
        .expect("a reply")
}

#[tokio::test]
async fn malformed_frames_get_named_errors_and_the_broker_keeps_serving() {
    let broker = Broker::start(None);
    let buyer = Buyer::login(&broker, "b", "0");
    let client = Home::new(buyer.home.path()).connect().await.unwrap();
    let err = |r: Response| match r {
        Response::Error(e) => e.message,
        other => panic!("expected an error, got {other:?}"),
    };
    let msg = err(raw(&client.conn, &[9, 0, 0, 0, 1, 0]).await);
    assert!(msg.contains("protocol version 9"), "{msg}");
    let msg = err(raw(&client.conn, &[frame::VERSION, 0xff, 0xff, 0xff, 0xff]).await);
    assert!(msg.contains("exceeds the limit"), "{msg}");
    let msg = err(raw(&client.conn, &[frame::VERSION, 0, 0, 0, 50, 1, 2, 3]).await);
    assert!(msg.contains("truncated"), "{msg}");
    let msg = err(raw(&client.conn, &[frame::VERSION, 0, 0, 0, 2, 0xff, 0xff]).await);
    assert!(msg.contains("not a valid message"), "{msg}");
    // A request whose role does not fit is refused by name.
    let offer = cpushare_proto::msg::SellOffer {
        cpus: 1,
        mem_mib: 64,
        kinds: vec![cpushare_proto::msg::SandboxKind::Wasm],
        price: cpushare_proto::money::Micros(1),
        min_minutes: 1,
        max_minutes: 1,
    };
    let replies = client::call_on(&client.conn, &Request::Sell(offer))
        .await
        .unwrap();
    assert!(matches!(&replies[0], Response::Error(e) if e.message.contains("only a seller")));
    // Still serving.
    match client.call(&Request::Whoami).await.unwrap() {
        Response::Whoami { name, .. } => assert_eq!(name, "b"),
        other => panic!("{other:?}"),
    }
}
