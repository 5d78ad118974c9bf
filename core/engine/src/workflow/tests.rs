use serde_json::json;

use super::*;

/// A workflow using every member the format defines, plus members it does not, at every level.
fn full() -> Value {
    json!({
        "format-version": "1.0.0",
        "type": "workflow",
        "source-system-type": "example.com:bpm",
        "source-system-version": "7.2",
        "source-system-instance": "5831e06b-d579-4a32-91f8-877a18ae7118",
        "workflow-version": "656e6bcd",
        "created-at": "2021-03-22T07:38:22.800+00:00",
        "created-by": {"id": "s393939", "name": "Ann", "email": "ann@example.com", "x-badge": 7},
        "modified-at": "2021-03-22T07:38:22.800+00:00",
        "modified-by": {"id": "s393940"},
        "process": "agree",
        "dynamicity": "static",
        "context": "it-infra",
        "slug": "new-laptop",
        "name": "Order a new laptop",
        "description": "For consultants and employees without accounts.",
        "x-usm-number": 1,
        "x-usm-trigger": "reactive",
        "x-vendor": {"colour": "purple", "tags": [1, "two", null]},
        "steps": [{
            "id": "accept", "sort-index": 0, "name": "Accept the request", "description": "Log it",
            "process": "agree", "owner": "desk",
            "activities": [{
                "id": "log", "sort-index": 1, "description": "Log the wish",
                "responsibilities": {"operator": ["R"], "manager": ["A", "I"]},
                "effort": {"hours": 2}
            }]
        }],
        "profiles": [
            {"id": "operator", "name": "Service desk operator", "x-ldap": "cn=ops"},
            {"id": "manager", "name": "Service manager"}
        ]
    })
}

fn parse_value(value: &Value) -> Result<WifDocument, WifError> {
    parse(value.to_string().as_bytes(), None)
}

#[test]
fn a_full_document_round_trips_with_its_unknown_members() {
    let input = full();
    let document = parse_value(&input).unwrap();
    assert_eq!(document.document_type, DocumentType::Workflow);
    assert_eq!(
        document.steps[0].activities[0].responsibilities["manager"],
        [Raci::A, Raci::I]
    );
    assert_eq!(document.extra["x-vendor"]["colour"], "purple");
    assert_eq!(document.steps[0].extra["owner"], "desk");
    assert_eq!(serde_json::to_value(&document).unwrap(), input);
    let again = parse(&serde_json::to_vec(&document).unwrap(), None).unwrap();
    assert_eq!(again, document);
}

#[test]
fn a_template_needs_no_name_steps_or_profiles() {
    let document = parse_value(
        &json!({"format-version": "1.0.0", "type": "workflow-template", "slug": "empty"}),
    )
    .unwrap();
    assert_eq!(document.name, None);
    assert!(document.steps.is_empty() && document.profiles.is_empty());
    let exported = serde_json::to_value(&document).unwrap();
    assert_eq!(
        exported,
        json!({"format-version": "1.0.0", "type": "workflow-template", "slug": "empty", "steps": [], "profiles": []})
    );
}

#[test]
fn the_media_type_gives_the_type_and_must_agree_with_it() {
    let mut input = full();
    input.as_object_mut().unwrap().remove("type");
    let bytes = input.to_string();
    assert_eq!(
        parse(bytes.as_bytes(), Some(DocumentType::Workflow))
            .unwrap()
            .document_type,
        DocumentType::Workflow
    );
    let refused = parse(bytes.as_bytes(), None).unwrap_err();
    assert_eq!(
        (refused.pointer.as_str(), refused.reason),
        ("/type", Reason::Required)
    );
    let refused = parse(
        full().to_string().as_bytes(),
        Some(DocumentType::WorkflowTemplate),
    )
    .unwrap_err();
    assert_eq!(
        (refused.pointer.as_str(), refused.reason),
        ("/type", Reason::TypeMismatch)
    );
    for t in [DocumentType::Workflow, DocumentType::WorkflowTemplate] {
        assert_eq!(DocumentType::from_media_type(t.media_type()), Some(t));
    }
    assert_eq!(DocumentType::from_media_type("application/json"), None);
}

#[test]
fn later_minor_versions_are_read_and_written_as_1_0_0() {
    let mut input = full();
    input["format-version"] = json!("1.3.0");
    input["x-new-in-1-3"] = json!(true);
    let exported = serde_json::to_value(parse_value(&input).unwrap()).unwrap();
    assert_eq!(exported["format-version"], "1.0.0");
    assert_eq!(exported["x-new-in-1-3"], true);
}

#[test]
fn a_sort_index_written_as_digits_is_read_as_the_integer() {
    let mut input = full();
    input["steps"][0]["sort-index"] = json!("3");
    let document = parse_value(&input).unwrap();
    assert_eq!(document.steps[0].sort_index, Some(3));
    assert_eq!(
        serde_json::to_value(&document).unwrap()["steps"][0]["sort-index"],
        3
    );
}

#[test]
fn equal_sort_indexes_and_two_accountables_are_not_refused() {
    // The format says sort-index only suggests an order, and sets no limit on A per activity.
    let mut input = full();
    input["steps"][0]["activities"][0]["sort-index"] = json!(0);
    input["steps"][0]["activities"][0]["responsibilities"] =
        json!({"operator": ["A"], "manager": ["A"]});
    assert!(parse_value(&input).is_ok());
}

#[test]
fn each_rule_refuses_with_the_pointer_of_the_member_and_a_stable_reason() {
    type Edit = fn(&mut Value);
    let cases: &[(&str, Edit, &str, Reason)] = &[
        (
            "format-version missing",
            |v| {
                v.as_object_mut().unwrap().remove("format-version");
            },
            "/format-version",
            Reason::Required,
        ),
        (
            "format-version 2",
            |v| v["format-version"] = json!("2.0.0"),
            "/format-version",
            Reason::UnsupportedVersion,
        ),
        (
            "format-version not semver",
            |v| v["format-version"] = json!("1.0"),
            "/format-version",
            Reason::UnsupportedVersion,
        ),
        (
            "type unknown",
            |v| v["type"] = json!("process"),
            "/type",
            Reason::UnknownValue,
        ),
        (
            "process unknown",
            |v| v["process"] = json!("deploy"),
            "/process",
            Reason::UnknownValue,
        ),
        (
            "step process unknown",
            |v| v["steps"][0]["process"] = json!("deploy"),
            "/steps/0/process",
            Reason::UnknownValue,
        ),
        (
            "dynamicity unknown",
            |v| v["dynamicity"] = json!("sometimes"),
            "/dynamicity",
            Reason::UnknownValue,
        ),
        (
            "name a number",
            |v| v["name"] = json!(5),
            "/name",
            Reason::WrongType,
        ),
        (
            "workflow without name",
            |v| {
                v.as_object_mut().unwrap().remove("name");
            },
            "/name",
            Reason::Required,
        ),
        (
            "blank name",
            |v| v["name"] = json!("  "),
            "/name",
            Reason::InvalidLength,
        ),
        (
            "slug missing",
            |v| {
                v.as_object_mut().unwrap().remove("slug");
            },
            "/slug",
            Reason::Required,
        ),
        (
            "slug with a double dash",
            |v| v["slug"] = json!("new--laptop"),
            "/slug",
            Reason::InvalidSlug,
        ),
        (
            "slug ending in a dash",
            |v| v["slug"] = json!("laptop-"),
            "/slug",
            Reason::InvalidSlug,
        ),
        (
            "slug with a slash",
            |v| v["slug"] = json!("a/b"),
            "/slug",
            Reason::InvalidSlug,
        ),
        (
            "empty workflow-version",
            |v| v["workflow-version"] = json!(""),
            "/workflow-version",
            Reason::InvalidLength,
        ),
        (
            "created-at not a time",
            |v| v["created-at"] = json!("yesterday"),
            "/created-at",
            Reason::InvalidTimestamp,
        ),
        (
            "person without id",
            |v| v["created-by"] = json!({"name": "Ann"}),
            "/created-by/id",
            Reason::Required,
        ),
        (
            "steps an object",
            |v| v["steps"] = json!({}),
            "/steps",
            Reason::WrongType,
        ),
        (
            "step without id",
            |v| {
                v["steps"][0].as_object_mut().unwrap().remove("id");
            },
            "/steps/0/id",
            Reason::Required,
        ),
        (
            "negative sort-index",
            |v| v["steps"][0]["sort-index"] = json!(-1),
            "/steps/0/sort-index",
            Reason::WrongType,
        ),
        (
            "fractional sort-index",
            |v| v["steps"][0]["activities"][0]["sort-index"] = json!(1.5),
            "/steps/0/activities/0/sort-index",
            Reason::WrongType,
        ),
        (
            "duplicate step id",
            |v| {
                let s = v["steps"][0].clone();
                v["steps"].as_array_mut().unwrap().push(s);
            },
            "/steps/1/id",
            Reason::DuplicateId,
        ),
        (
            "duplicate activity id",
            |v| {
                let a = v["steps"][0]["activities"][0].clone();
                v["steps"][0]["activities"].as_array_mut().unwrap().push(a);
            },
            "/steps/0/activities/1/id",
            Reason::DuplicateId,
        ),
        (
            "duplicate profile id",
            |v| v["profiles"][1]["id"] = json!("operator"),
            "/profiles/1/id",
            Reason::DuplicateId,
        ),
        (
            "letter X",
            |v| v["steps"][0]["activities"][0]["responsibilities"]["manager"] = json!(["A", "X"]),
            "/steps/0/activities/0/responsibilities/manager/1",
            Reason::InvalidLetter,
        ),
        (
            "letters as one string",
            |v| v["steps"][0]["activities"][0]["responsibilities"]["manager"] = json!("AI"),
            "/steps/0/activities/0/responsibilities/manager",
            Reason::WrongType,
        ),
        (
            "unknown profile",
            |v| v["steps"][0]["activities"][0]["responsibilities"]["c/o~x"] = json!(["I"]),
            "/steps/0/activities/0/responsibilities/c~1o~0x",
            Reason::UnknownProfile,
        ),
        (
            "too many steps",
            |v| {
                v["steps"] = Value::Array(
                    (0..=MAX_ITEMS)
                        .map(|i| json!({"id": i.to_string()}))
                        .collect(),
                )
            },
            "/steps",
            Reason::TooMany,
        ),
        ("not an object", |v| *v = json!([1]), "", Reason::WrongType),
    ];
    for (what, edit, pointer, reason) in cases {
        let mut input = full();
        edit(&mut input);
        let error = parse_value(&input).expect_err(what);
        assert_eq!(
            (error.pointer.as_str(), error.reason),
            (*pointer, *reason),
            "{what}: {error}"
        );
    }
    let not_json = parse(b"{\"format-version\": ", None).unwrap_err();
    assert_eq!(not_json.reason, Reason::NotJson);
}

#[test]
fn the_draft_shape_is_converted_to_a_template() {
    let draft = json!({"usm_wif": "1.0-draft", "vendor": {"x": 1}, "workflow": {
        "slug": "wf", "name": "W", "version": "2", "number": 4, "trigger": "reactive", "colour": "red",
        "steps": [{"name": "s", "process": "recover", "activities": [
            {"name": "a", "raci": {"desk": "RA", "user": "I"}},
            {"name": "b", "raci": {"desk": "R"}}]}]}});
    let document = parse_value(&draft).unwrap();
    assert_eq!(
        serde_json::to_value(&document).unwrap(),
        json!({
            "format-version": "1.0.0", "type": "workflow-template", "slug": "wf", "name": "W",
            "workflow-version": "2", "x-usm-number": 4, "x-usm-trigger": "reactive",
            "steps": [{"id": "1", "sort-index": 1, "name": "s", "process": "recover", "activities": [
                {"id": "1", "sort-index": 1, "description": "a", "responsibilities": {"desk": ["R", "A"], "user": ["I"]}},
                {"id": "2", "sort-index": 2, "description": "b", "responsibilities": {"desk": ["R"]}}]}],
            "profiles": [{"id": "desk"}, {"id": "user"}]
        })
    );
    let bad_letter = json!({"usm_wif": "1", "workflow": {"slug": "wf", "name": "W", "steps": [
        {"name": "s", "process": "agree", "activities": [{"name": "a", "raci": {"desk": "X"}}]}]}});
    let error = parse_value(&bad_letter).unwrap_err();
    assert_eq!(
        (error.pointer.as_str(), error.reason),
        (
            "/workflow/steps/0/activities/0/raci/desk",
            Reason::InvalidLetter
        )
    );
    let bad_process = json!({"usm_wif": "1", "workflow": {"slug": "x", "name": "x", "steps": [{"name": "s", "process": "deploy", "activities": []}]}});
    assert_eq!(
        parse_value(&bad_process).unwrap_err().reason,
        Reason::WrongType
    );
    let declared = parse(
        draft.to_string().as_bytes(),
        Some(DocumentType::WorkflowTemplate),
    )
    .unwrap_err();
    assert_eq!(
        (declared.pointer.as_str(), declared.reason),
        ("/format-version", Reason::Required)
    );
}

#[test]
fn the_bundled_templates_are_1_0_0_templates_whose_profiles_are_named() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/usm-core/workflows");
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let raw: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(raw["format-version"], "1.0.0", "{}", path.display());
        let document = parse(&bytes, Some(DocumentType::WorkflowTemplate)).unwrap();
        assert!(
            path.to_string_lossy().ends_with(".workflow-template.json"),
            "{}",
            path.display()
        );
        assert!(
            document.profiles.iter().all(|p| p.name.is_some()),
            "{}",
            path.display()
        );
        assert_eq!(
            serde_json::to_value(&document).unwrap(),
            raw,
            "{}",
            path.display()
        );
        count += 1;
    }
    assert_eq!(count, 8);
}
