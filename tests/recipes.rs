//! The operator guide cannot rot: every ```` ```sh recipe=… ```` block of
//! `docs/operations.md` runs, in order, with a real `grpcurl` (installed by
//! `deploy/install-tools`) against the whole suite on ephemeral ports, and
//! its output is checked. A block may carry `sets=VAR:json.path`: the value
//! at that path of its answer becomes `$VAR` for the blocks after it. Runs
//! on SQLite, or on PostgreSQL when `CRM_TEST_DATABASE_URL` is set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{collections::BTreeMap, path::PathBuf, process::Command};

use crm_e2e::Suite;

/// One runnable block of the guide.
#[derive(Debug)]
struct Recipe {
    name: String,
    /// `(variable, json path)` to take from the answer.
    sets: Option<(String, String)>,
    script: String,
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The recipe blocks of a markdown document, in order.
fn recipes(markdown: &str) -> Vec<Recipe> {
    let mut out = Vec::new();
    let mut current: Option<Recipe> = None;
    for line in markdown.lines() {
        match current.as_mut() {
            None => {
                let Some(info) = line.strip_prefix("```sh ") else { continue };
                let mut name = None;
                let mut sets = None;
                for attr in info.split_whitespace() {
                    if let Some(n) = attr.strip_prefix("recipe=") {
                        name = Some(n.to_owned());
                    } else if let Some(s) = attr.strip_prefix("sets=") {
                        let (var, path) = s.split_once(':').expect("sets=VAR:json.path");
                        sets = Some((var.to_owned(), path.to_owned()));
                    }
                }
                if let Some(name) = name {
                    current = Some(Recipe { name, sets, script: String::new() });
                }
            }
            Some(recipe) => {
                if line.trim_end() == "```" {
                    out.extend(current.take());
                } else {
                    recipe.script.push_str(line);
                    recipe.script.push('\n');
                }
            }
        }
    }
    assert!(current.is_none(), "unterminated recipe block");
    out
}

/// The scalar at a dotted path (`profile.id`) of grpcurl's JSON answer.
/// grpcurl prints protobuf JSON indented by two spaces, one field a line.
fn json_value(output: &str, path: &str) -> Option<String> {
    let mut keys: Vec<String> = Vec::new();
    for line in output.lines() {
        let trimmed = line.trim_start();
        let Some(rest) = trimmed.strip_prefix('"') else { continue };
        let Some((key, value)) = rest.split_once("\": ") else { continue };
        let depth = (line.len() - trimmed.len()) / 2;
        if depth == 0 {
            continue;
        }
        keys.truncate(depth - 1);
        keys.push(key.to_owned());
        let value = value.trim_end_matches(',');
        if keys.join(".") == path && !value.ends_with('{') && !value.ends_with('[') {
            return Some(value.trim_matches('"').to_owned());
        }
    }
    None
}

/// Run one recipe with bash, `grpcurl` first on the PATH; stdout, or a panic
/// with everything it printed.
fn run(recipe: &Recipe, script: &str, tools: &str, vars: &BTreeMap<String, String>) -> String {
    let path = format!("{tools}:{}", std::env::var("PATH").unwrap_or_default());
    let output = Command::new("timeout")
        .args(["120", "bash", "-euo", "pipefail", "-c", script])
        .env("PATH", path)
        .envs(vars)
        .output()
        .unwrap_or_else(|e| panic!("cannot run bash: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "recipe `{}` failed ({}):\n{script}\n--- stdout\n{stdout}\n--- stderr\n{}",
        recipe.name,
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_guide_recipes_work() {
    let root = workspace_root();
    let install = Command::new(root.join("deploy/install-tools")).output().expect("run deploy/install-tools");
    assert!(install.status.success(), "deploy/install-tools: {}", String::from_utf8_lossy(&install.stderr));
    let tools = String::from_utf8(install.stdout).unwrap().trim().to_owned();
    let guide = std::fs::read_to_string(root.join("docs/operations.md")).unwrap();
    let recipes = recipes(&guide);

    let suite = Suite::start().await;
    let ports = [
        (50051, suite.gateway.addr.port()),
        (50052, suite.identification.addr.port()),
        (50053, suite.differentiation.as_ref().unwrap().addr.port()),
        (50054, suite.interaction.addr.port()),
        (50055, suite.personalization.as_ref().unwrap().addr.port()),
    ];

    let expected = [
        "health",
        "reflection",
        "resolve",
        "resolve-again",
        "touchpoint",
        "purchase",
        "lookup",
        "unsure-match",
        "review-queue",
        "review-decide",
        "export",
        "erase",
    ];
    let names: Vec<&str> = recipes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, expected, "the guide's recipes, in order (add a check below for a new one)");

    let mut vars = BTreeMap::new();
    for recipe in &recipes {
        let mut script = recipe.script.clone();
        for (default, actual) in ports {
            script = script.replace(&format!("localhost:{default}"), &format!("127.0.0.1:{actual}"));
        }
        assert!(!script.contains("localhost:"), "recipe `{}` names an unknown port", recipe.name);
        let out = tokio::task::spawn_blocking({
            let (tools, vars) = (tools.clone(), vars.clone());
            let recipe_script = script.clone();
            let recipe = Recipe { name: recipe.name.clone(), sets: None, script: String::new() };
            move || run(&recipe, &recipe_script, &tools, &vars)
        })
        .await
        .unwrap();
        if let Some((var, path)) = &recipe.sets {
            let value = json_value(&out, path)
                .unwrap_or_else(|| panic!("recipe `{}`: no `{path}` in its answer:\n{out}", recipe.name));
            assert!(!value.is_empty(), "recipe `{}`: empty `{path}`", recipe.name);
            vars.insert(var.clone(), value);
        }
        let id = vars.get("ID").cloned().unwrap_or_default();
        let field = |path: &str| json_value(&out, path);
        match recipe.name.as_str() {
            "health" => {
                assert_eq!(out.matches("\"SERVING\"").count(), 5, "{out}");
            }
            "reflection" => {
                for listed in
                    ["crm.gateway.v1.GatewayService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"]
                {
                    assert!(out.contains(listed), "{listed} in:\n{out}");
                }
                assert!(out.contains("rpc ResolveIdentity"), "{out}");
                assert!(out.contains("repeated .crm.identification.v1.Identifier identifiers"), "{out}");
            }
            "resolve" => assert_eq!(field("created").as_deref(), Some("true"), "{out}"),
            "resolve-again" => {
                assert_eq!(field("profile.id"), Some(id), "the same person: {out}");
                assert_eq!(field("created"), None, "not created again: {out}");
            }
            "touchpoint" => {
                assert_eq!(field("profile.id"), Some(id), "{out}");
                assert!(!out.contains("missingParts"), "every part answered: {out}");
            }
            "purchase" => {
                assert!(field("order.id").is_some_and(|o| !o.is_empty()), "{out}");
                assert!(vars["SEQ"].parse::<i64>().unwrap() > 0);
            }
            "lookup" => {
                assert!(out.contains(&format!("\"id\": \"{id}\"")), "the profile: {out}");
                assert!(out.contains("INTERACTION_TYPE_PURCHASE"), "the purchase in the timeline: {out}");
                assert!(out.contains("\"orderCount\": \"1\""), "the value includes the purchase: {out}");
                assert!(out.contains(&format!("\"interactionSequence\": \"{}\"", vars["SEQ"])), "{out}");
            }
            "unsure-match" => assert_eq!(field("created").as_deref(), Some("true"), "{out}"),
            "review-queue" => {
                assert!(out.contains(&vars["REVIEW_ITEM_ID"]), "the item is listed: {out}");
                assert!(out.contains("fieldWeights"), "with its evidence: {out}");
            }
            "review-decide" => assert_eq!(field("profile.id"), Some(id), "merged into the first profile: {out}"),
            "export" => assert!(field("documentJson").is_some(), "{out}"),
            "erase" => assert!(field("sequence").and_then(|s| s.parse::<i64>().ok()).is_some_and(|s| s > 0), "{out}"),
            other => panic!("no check for recipe `{other}`"),
        }
    }
}

#[test]
fn recipe_blocks_and_answers_parse() {
    let md =
        "text\n```sh recipe=a sets=ID:profile.id\ngrpcurl x\n```\n```sh\nnot a recipe\n```\n```sh recipe=b\ny\n```\n";
    let r = recipes(md);
    assert_eq!(r.len(), 2);
    assert_eq!((r[0].name.as_str(), r[0].script.as_str()), ("a", "grpcurl x\n"));
    assert_eq!(r[0].sets, Some(("ID".into(), "profile.id".into())));
    assert_eq!(r[1].sets, None);
    let answer = "{\n  \"profile\": {\n    \"id\": \"p1\",\n    \"name\": {\n      \"id\": \"n\"\n    }\n  },\n  \"created\": true,\n  \"sequence\": \"7\"\n}\n";
    assert_eq!(json_value(answer, "profile.id").as_deref(), Some("p1"));
    assert_eq!(json_value(answer, "profile.name.id").as_deref(), Some("n"));
    assert_eq!(json_value(answer, "created").as_deref(), Some("true"));
    assert_eq!(json_value(answer, "sequence").as_deref(), Some("7"));
    assert_eq!(json_value(answer, "id"), None);
}
