//! Contract test of `deploy/keycloak/realm-tarn.json` (Keycloak itself cannot run here): the
//! realm gives tokens that tarn's default OIDC configuration accepts and maps to the roles the
//! example policies and the audit trail use.

use serde_json::Value;

fn realm() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/keycloak/realm-tarn.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn mappers<'a>(item: &'a Value, kind: &str) -> Vec<&'a Value> {
    item["protocolMappers"]
        .as_array()
        .map(|m| m.iter().filter(|m| m["protocolMapper"] == kind).collect())
        .unwrap_or_default()
}

#[test]
fn keycloak_realm_matches_what_tarn_expects() {
    let realm = realm();
    let oidc = tarn_core::config::OidcConfig::default();
    assert_eq!(realm["realm"], "tarn");
    assert_eq!(
        realm["defaultSignatureAlgorithm"], "RS256",
        "tarn verifies RS256 and ES256"
    );

    // Every client's access tokens carry `aud: tarn` (the audience tarn is configured with).
    let clients = realm["clients"].as_array().unwrap();
    let ids: Vec<&str> = clients.iter().map(|c| c["clientId"].as_str().unwrap()).collect();
    for wanted in ["tarn", "superset", "metabase", "airflow", "datahub"] {
        assert!(ids.contains(&wanted), "no client {wanted}: {ids:?}");
    }
    for client in clients {
        let audience = mappers(client, "oidc-audience-mapper");
        assert!(
            audience
                .iter()
                .any(|m| m["config"]["included.client.audience"] == "tarn"
                    && m["config"]["access.token.claim"] == "true"),
            "client {} has no audience mapper for tarn",
            client["clientId"]
        );
        let scopes: Vec<&str> = client["defaultClientScopes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert!(
            scopes.contains(&"roles") && scopes.contains(&"profile"),
            "client {}: {scopes:?}",
            client["clientId"]
        );
    }

    // The claims tarn reads by default are the ones the scopes produce.
    let scopes = realm["clientScopes"].as_array().unwrap();
    let scope = |name: &str| scopes.iter().find(|s| s["name"] == name).unwrap();
    let claims: Vec<String> = mappers(scope("roles"), "oidc-usermodel-realm-role-mapper")
        .into_iter()
        .chain(mappers(scope("roles"), "oidc-usermodel-client-role-mapper"))
        .filter(|m| m["config"]["access.token.claim"] == "true")
        .map(|m| {
            m["config"]["claim.name"]
                .as_str()
                .unwrap()
                .replace("${client_id}", "{audience}")
        })
        .collect();
    for claim in &claims {
        assert!(
            oidc.groups_claims.contains(claim),
            "tarn does not read {claim}: {:?}",
            oidc.groups_claims
        );
    }
    assert!(claims.contains(&"realm_access.roles".to_string()), "{claims:?}");
    let username = mappers(scope("profile"), "oidc-usermodel-attribute-mapper")
        .into_iter()
        .find(|m| m["config"]["user.attribute"] == "username")
        .unwrap();
    assert_eq!(
        username["config"]["claim.name"].as_str().unwrap(),
        oidc.user_claim
    );
    assert_eq!(username["config"]["access.token.claim"], "true");

    // The roles of the example policies and of the audit trail exist as realm roles.
    let roles: Vec<&str> = realm["roles"]["realm"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    let auditor = tarn_core::config::AuditConfig::default().auditor_role;
    for wanted in ["admin", "analyst", "ingest", auditor.as_str()] {
        assert!(roles.contains(&wanted), "no realm role {wanted}: {roles:?}");
    }
    let policy = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tarn-policy/tests/role-file/governance.toml"
    ))
    .unwrap();
    for role in ["admin", "analyst"] {
        assert!(
            policy.contains(&format!("[roles.{role}]")),
            "{role} not in the example role file"
        );
    }
    // Service accounts hold realm roles that exist.
    for user in realm["users"].as_array().unwrap() {
        for role in user["realmRoles"].as_array().unwrap() {
            assert!(roles.contains(&role.as_str().unwrap()), "{user}");
        }
    }
}
