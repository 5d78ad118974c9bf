use std::sync::Arc;

use usm_store::{MemoryStore, SledStore, StoreConfig};

use super::*;

fn domains() -> Vec<Domain> {
    ["it", "hr"].map(|d| Domain::new(d).unwrap()).to_vec()
}

fn admin() -> Actor {
    Actor::new("admin", [Role::Admin])
}

fn hr_admin() -> Actor {
    Actor::new("hana", [Role::Admin]).in_domains([Domain::new("hr").unwrap()])
}

fn person(id: &str, domains: Option<&[&str]>) -> NewPerson {
    NewPerson {
        id: id.into(),
        name: format!("{id} Lee"),
        email: Some(format!("{id}@example.org")),
        domains: domains.map(|d| d.iter().map(|s| (*s).to_owned()).collect()),
        manager: None,
        vip: false,
        locale: None,
    }
}

fn free(_: &str) -> bool {
    false
}

fn directory() -> Directory {
    Directory::new(Arc::new(MemoryStore::new()), domains())
}

fn field_of(error: DirectoryError) -> String {
    match error {
        DirectoryError::Invalid { field, .. } | DirectoryError::Reference { field, .. } => field,
        other => panic!("expected an invalid member, got {other:?}"),
    }
}

#[test]
fn people_are_checked_and_kept() {
    let directory = directory();
    let ann = directory
        .create_person(&admin(), person("ann", Some(&["it"])), free)
        .unwrap();
    assert!(ann.active);
    let mut bad = person("Bad Id", None);
    assert_eq!(
        field_of(
            directory
                .create_person(&admin(), bad.clone(), free)
                .unwrap_err()
        ),
        "/id"
    );
    bad.id = "bo".into();
    bad.email = Some("not an address".into());
    assert_eq!(
        field_of(
            directory
                .create_person(&admin(), bad.clone(), free)
                .unwrap_err()
        ),
        "/email"
    );
    bad.email = None;
    bad.domains = Some(vec!["it".into(), "mars".into()]);
    assert_eq!(
        field_of(
            directory
                .create_person(&admin(), bad.clone(), free)
                .unwrap_err()
        ),
        "/domains/1"
    );
    bad.domains = None;
    bad.manager = Some("nobody".into());
    assert_eq!(
        field_of(directory.create_person(&admin(), bad, free).unwrap_err()),
        "/manager"
    );
    assert!(matches!(
        directory.create_person(&admin(), person("ann", None), free),
        Err(DirectoryError::Taken(_))
    ));
    // An id another principal already goes by is taken too.
    assert!(matches!(
        directory.create_person(&admin(), person("monitoring", None), |id| id
            == "monitoring"),
        Err(DirectoryError::Taken(_))
    ));
}

#[test]
fn domain_admins_manage_their_domains_and_agents_read() {
    let directory = directory();
    assert!(matches!(
        directory.create_person(&hr_admin(), person("ann", Some(&["it"])), free),
        Err(DirectoryError::Forbidden(_))
    ));
    assert!(matches!(
        directory.create_person(&hr_admin(), person("ann", None), free),
        Err(DirectoryError::Forbidden(_))
    ));
    directory
        .create_person(&hr_admin(), person("hal", Some(&["hr"])), free)
        .unwrap();
    directory
        .create_person(&admin(), person("ann", Some(&["it"])), free)
        .unwrap();
    let it_agent = Actor::new("ivy", [Role::Agent]).in_domains([Domain::new("it").unwrap()]);
    let seen: Vec<String> = directory
        .people(&it_agent, None, 100)
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(seen, ["ann"]);
    assert!(matches!(
        directory.person(&it_agent, "hal"),
        Err(DirectoryError::NotFound { .. })
    ));
    let requester = Actor::new("rob", [Role::Requester]);
    assert!(matches!(
        directory.people(&requester, None, 100),
        Err(DirectoryError::Forbidden(_))
    ));
    assert!(matches!(
        directory.update_person(&hr_admin(), "ann", PersonPatch::default()),
        Err(DirectoryError::NotFound { .. })
    ));
}

#[test]
fn groups_hold_active_people_of_their_domain_and_check_assignments() {
    let directory = directory();
    for (id, domains) in [
        ("ann", Some(&["it"][..])),
        ("hal", Some(&["hr"][..])),
        ("gil", None),
    ] {
        directory
            .create_person(&admin(), person(id, domains), free)
            .unwrap();
    }
    let new = |members: &[&str]| NewGroup {
        id: "network".into(),
        name: "Network".into(),
        domain: "it".into(),
        members: members.iter().map(|m| (*m).to_owned()).collect(),
    };
    assert_eq!(
        field_of(
            directory
                .create_group(&admin(), new(&["ann", "hal"]))
                .unwrap_err()
        ),
        "/members/1"
    );
    assert_eq!(
        field_of(
            directory
                .create_group(&admin(), new(&["ann", "ann"]))
                .unwrap_err()
        ),
        "/members/1"
    );
    assert_eq!(
        field_of(directory.create_group(&admin(), new(&["zed"])).unwrap_err()),
        "/members/0"
    );
    assert!(matches!(
        directory.create_group(&hr_admin(), new(&["ann"])),
        Err(DirectoryError::Forbidden(_))
    ));
    directory.create_group(&admin(), new(&["ann"])).unwrap();
    let it = Domain::new("it").unwrap();
    let hr = Domain::new("hr").unwrap();
    assert!(
        directory
            .check_assignment(&it, Some("network"), Some("ann"))
            .is_ok()
    );
    assert_eq!(
        directory
            .check_assignment(&it, Some("network"), Some("gil"))
            .unwrap_err()
            .0,
        "/fields/assignee"
    );
    assert!(directory.check_assignment(&it, None, Some("gil")).is_ok());
    assert_eq!(
        directory
            .check_assignment(&hr, Some("network"), None)
            .unwrap_err()
            .0,
        "/fields/assignment_group"
    );
    assert_eq!(
        directory
            .check_assignment(&it, None, Some("hal"))
            .unwrap_err()
            .0,
        "/fields/assignee"
    );
    assert_eq!(directory.groups_of("ann", &it), ["network"]);
    // A deactivated person keeps their membership but is no longer assignable.
    directory.deactivate_person(&admin(), "ann").unwrap();
    assert!(directory.active_person("ann").is_none());
    assert!(directory.has_person("ann"));
    assert_eq!(
        directory
            .check_assignment(&it, Some("network"), Some("ann"))
            .unwrap_err()
            .0,
        "/fields/assignee"
    );
}

#[test]
fn the_directory_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Arc::new(SledStore::open(dir.path(), StoreConfig::default()).unwrap());
        let directory = Directory::new(store, domains());
        directory
            .create_person(&admin(), person("ann", Some(&["it"])), free)
            .unwrap();
        directory
            .create_group(
                &admin(),
                NewGroup {
                    id: "network".into(),
                    name: "Network".into(),
                    domain: "it".into(),
                    members: vec!["ann".into()],
                },
            )
            .unwrap();
    }
    let store = Arc::new(SledStore::open(dir.path(), StoreConfig::default()).unwrap());
    let directory = Directory::new(store, domains());
    assert_eq!(directory.active_person("ann").unwrap().name, "ann Lee");
    assert_eq!(
        directory.group(&admin(), "network").unwrap().members,
        ["ann"]
    );
}

#[test]
fn a_locale_is_a_language_tag() {
    let directory = directory();
    let mut new = person("lea", None);
    new.locale = Some("pt-BR".into());
    let lea = directory.create_person(&admin(), new, free).unwrap();
    assert_eq!(lea.locale.as_deref(), Some("pt-BR"));
    for bad in ["", "not a tag", "de_DE", "x"] {
        let mut new = person("bad", None);
        new.locale = Some(bad.into());
        let refused = directory.create_person(&admin(), new, free).unwrap_err();
        assert_eq!(field_of(refused), "/locale", "{bad}");
    }
    let cleared = directory
        .update_person(
            &admin(),
            "lea",
            serde_json::from_value(serde_json::json!({"locale": null})).unwrap(),
        )
        .unwrap();
    assert_eq!(cleared.locale, None);
}
