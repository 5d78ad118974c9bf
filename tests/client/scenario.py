"""A service desk's day through a client generated from usm's own /openapi.json.

`.ci/client` generates the client (openapi-python-client) from a running server's description
and runs this with the server's URL and an admin token. Every call goes through a generated
operation and its typed models; a status the description does not declare makes the client
raise (raise_on_unexpected_status), so an undeclared answer fails the run like a wrong one.
"""

import io
import sys
import tarfile
import time

from usm_client import AuthenticatedClient
from usm_client.api.approvals import create_approval, list_approvals
from usm_client.api.audit import audit_log
from usm_client.api.automations import list_automations
from usm_client.api.catalog import create_item, get_item, list_items, order_item, patch_item
from usm_client.api.directory import create_group, create_person, get_person, list_groups
from usm_client.api.kpis import kpis
from usm_client.api.modules import get_module, install_module, list_modules
from usm_client.api.notifications import deliveries, list_rules, list_templates
from usm_client.api.operations import healthz
from usm_client.api.pipelines import pipelines
from usm_client.api.records import (
    add_comment,
    batch,
    create_record,
    download,
    get_record,
    kinds,
    list_,
    list_comments,
    list_records,
    patch_record,
    record_history,
    record_sla,
    transition_record,
    upload,
)
from usm_client.api.search import create_queue, queue_records, search
from usm_client.api.tmf621 import (
    create_ticket,
    get_ticket,
    list_tickets,
    patch_ticket,
    register_listener,
    unregister_listener,
)
from usm_client.api.tokens import create_token, list_tokens, revoke_token
from usm_client.api.webhooks import create_webhook, delete_webhook, list_webhooks
from usm_client.api.workflows import list_workflows
from usm_client.models import (
    ApprovalRequest,
    Batch,
    CatalogItem,
    ItemPatch,
    NewComment,
    NewGroup,
    NewPerson,
    NewQueue,
    NewRecord,
    NewSubscription,
    NewToken,
    OrderRequest,
    Problem,
    RecordPatch,
    TransitionRequest,
    TroubleTicketCreate,
    TroubleTicketHubCreate,
    TroubleTicketUpdate,
    UploadForm,
)
from usm_client.types import File


def check(response, status, what):
    if response.status_code != status:
        raise SystemExit(
            f"{what}: expected {status}, got {response.status_code}: {response.content[:500]!r}"
        )
    return response.parsed


def main(base: str, token: str) -> None:
    client = AuthenticatedClient(base_url=base, token=token, raise_on_unexpected_status=True)

    assert check(healthz.sync_detailed(client=client), 200, "health").status == "ok"
    kind_names = [k.name for k in check(kinds.sync_detailed(client=client), 200, "kinds").kinds]
    assert "incident" in kind_names, kind_names
    check(pipelines.sync_detailed(client=client), 200, "pipelines")
    check(list_workflows.sync_detailed(client=client), 200, "workflows")
    check(list_automations.sync_detailed(client=client), 200, "automations")

    # Records: an idempotent create, a conditional edit, a move that carries its fields.
    new = NewRecord.from_dict(
        {"kind": "incident", "domain": "it", "title": "Mail is down",
         "fields": {"impact": "low", "urgency": "low", "category": "email"}}
    )
    created = create_record.sync_detailed(client=client, body=new, idempotency_key="day-1")
    incident = check(created, 201, "create")
    replay = create_record.sync_detailed(client=client, body=new, idempotency_key="day-1")
    assert check(replay, 201, "replay").id == incident.id
    assert replay.headers.get("idempotent-replayed") == "true"
    stale = patch_record.sync_detailed(
        incident.id, client=client, body=RecordPatch.from_dict({"title": "Mail is slow"}),
        if_match='"9"',
    )
    problem = check(stale, 412, "stale edit")
    assert isinstance(problem, Problem) and problem.code == "version_mismatch", problem
    edited = patch_record.sync_detailed(
        incident.id, client=client, body=RecordPatch.from_dict({"title": "Mail is slow"}),
        if_match=created.headers["etag"],
    )
    assert check(edited, 200, "edit").version == 2
    check(
        transition_record.sync_detailed(
            incident.id, client=client, body=TransitionRequest.from_dict({"to": "in_progress"})
        ),
        200,
        "start",
    )
    resolved = transition_record.sync_detailed(
        incident.id,
        client=client,
        body=TransitionRequest.from_dict(
            {"to": "resolved", "comment": "Queue restarted",
             "fields": {"resolution_code": "restart", "resolution": "Restarted the queue"}}
        ),
        if_match='"3"',
    )
    resolved = check(resolved, 200, "resolve with fields")
    assert resolved.state == "resolved" and resolved.version == 4, resolved
    assert resolved.fields["resolution_code"] == "restart"
    view = check(get_record.sync_detailed(incident.id, client=client), 200, "get")
    assert view.title == "Mail is slow", view
    history = check(record_history.sync_detailed(incident.id, client=client), 200, "history")
    assert [e.version for e in history.entries] == [1, 2, 3, 4]
    check(record_sla.sync_detailed(incident.id, client=client), 200, "sla")
    unknown = check(get_record.sync_detailed("INC-999", client=client), 404, "missing")
    assert unknown.code == "record_not_found"
    page = check(list_records.sync_detailed(client=client, kind="incident", limit=1), 200, "list")
    assert [r.id for r in page.records] == [incident.id]
    # A shaped page: a sparse fieldset, and the total counted from the index (which follows
    # commits within about a second).
    for _ in range(100):
        shaped = check(
            list_records.sync_detailed(
                client=client, kind="incident", fields="resolution_code,category", count=True,
                expand="links",
            ),
            200,
            "shaped list",
        )
        if shaped.total == 1:
            break
        time.sleep(0.1)
    assert shaped.total == 1, shaped
    assert shaped.records[0].fields.to_dict() == {"resolution_code": "restart", "category": "email"}

    # Bulk: each write on its own, answered in order.
    results = check(
        batch.sync_detailed(
            client=client,
            body=Batch.from_dict({"operations": [
                {"op": "create", "record": {"kind": "task", "title": "Check the queue"},
                 "key": "bulk-1"},
                {"op": "update", "id": "INC-404", "patch": {"title": "Nothing"}},
            ]}),
        ),
        200,
        "batch",
    ).results
    assert [r.status for r in results] == [201, 404], results
    assert results[1].problem.code == "record_not_found"

    # The conversation and a file.
    comment = add_comment.sync_detailed(
        incident.id, client=client, body=NewComment.from_dict({"body": "Users can send again."})
    )
    check(comment, 201, "comment")
    comments = check(list_comments.sync_detailed(incident.id, client=client), 200, "comments")
    assert comments.comments[-1].body == "Users can send again."
    attached = upload.sync_detailed(
        incident.id,
        client=client,
        body=UploadForm(
            file=File(payload=io.BytesIO(b"queue log\n"), file_name="queue.log",
                      mime_type="text/plain")
        ),
    )
    attachment = check(attached, 201, "upload")
    listed = check(list_.sync_detailed(incident.id, client=client), 200, "attachments")
    assert [a.filename for a in listed.attachments] == ["queue.log"]
    fetched = download.sync_detailed(incident.id, attachment.id, client=client)
    assert fetched.status_code == 200 and fetched.content == b"queue log\n"

    # People, groups, a person's token, and approvals the engine binds to people.
    for person in (
        {"id": "mia", "name": "Mia Lee", "email": "mia@example.org", "domains": ["it"]},
        {"id": "rob", "name": "Rob Ray", "email": "rob@example.org", "domains": ["it"],
         "manager": "mia"},
    ):
        check(create_person.sync_detailed(client=client, body=NewPerson.from_dict(person)), 201,
              "person")
    assert check(get_person.sync_detailed("rob", client=client), 200, "person").manager == "mia"
    check(
        create_group.sync_detailed(
            client=client,
            body=NewGroup.from_dict(
                {"id": "laptop-team", "name": "Laptop team", "domain": "it", "members": ["mia"]}
            ),
        ),
        201,
        "group",
    )
    assert "laptop-team" in [g.id for g in check(list_groups.sync_detailed(client=client), 200,
                                                  "groups").groups]
    robs = check(
        create_token.sync_detailed(
            client=client,
            body=NewToken.from_dict({"name": "rob-token", "roles": ["requester"], "person": "rob"}),
        ),
        201,
        "token",
    )
    mias = check(
        create_token.sync_detailed(
            client=client,
            body=NewToken.from_dict({"name": "mia-token", "roles": ["agent"], "person": "mia"}),
        ),
        201,
        "token",
    )
    assert "rob-token" in [t.name for t in check(list_tokens.sync_detailed(client=client), 200,
                                                 "tokens").tokens]
    rob = AuthenticatedClient(base_url=base, token=robs.token, raise_on_unexpected_status=True)
    mia = AuthenticatedClient(base_url=base, token=mias.token, raise_on_unexpected_status=True)
    refused = list_tokens.sync_detailed(client=rob)
    assert check(refused, 403, "a requester lists tokens").code == "forbidden"

    # The catalog: an item, an order as the requester, the manager's approval, the task.
    item = CatalogItem.from_dict({
        "id": "laptop", "domain": "it", "name": "A laptop",
        "form": {"type": "object", "required": ["model"],
                 "properties": {"model": {"enum": ["13-inch", "15-inch"]}}},
        "approval": {"by": "manager"},
        "fulfilment": [{"title": "Order a {{ variables.model }} laptop", "domain": "it",
                        "group": "laptop-team"}],
    })
    check(create_item.sync_detailed(client=client, body=item), 201, "catalog item")
    renamed = patch_item.sync_detailed(
        "laptop", client=client, body=ItemPatch.from_dict({"name": "A laptop, two sizes"})
    )
    assert check(renamed, 200, "rename").name == "A laptop, two sizes"
    # Rob's domain offers the bundled access request beside the new item.
    offered = [i.id for i in check(list_items.sync_detailed(client=rob), 200, "items").items]
    assert offered == ["it.access-request", "laptop"], offered
    check(get_item.sync_detailed("laptop", client=rob), 200, "item")
    wrong = order_item.sync_detailed(
        "laptop", client=rob, body=OrderRequest.from_dict({"variables": {"model": "17-inch"}})
    )
    assert check(wrong, 422, "bad order").field == "/variables/model"
    ordered = check(
        order_item.sync_detailed(
            "laptop", client=rob, body=OrderRequest.from_dict({"variables": {"model": "13-inch"}}),
            idempotency_key="order-1",
        ),
        201,
        "order",
    )
    approved = create_approval.sync_detailed(
        ordered.id, client=mia, body=ApprovalRequest.from_dict({"decision": "approve"}),
        if_match='"1"',
    )
    check(approved, 201, "approval")
    approvals = check(list_approvals.sync_detailed(ordered.id, client=client), 200, "approvals")
    assert [a.actor for a in approvals.approvals] == ["mia"]
    deadline = time.monotonic() + 20
    while True:
        tasks = check(list_records.sync_detailed(client=client, kind="task"), 200, "tasks")
        if any(t.title == "Order a 13-inch laptop" for t in tasks.records):
            break
        assert time.monotonic() < deadline, "no fulfilment task"
        time.sleep(0.1)

    # Search and queues (the index follows commits within about a second).
    deadline = time.monotonic() + 20
    while not check(search.sync_detailed(client=client, q="slow"), 200, "search").records:
        assert time.monotonic() < deadline, "the incident was never found"
        time.sleep(0.2)
    queue = check(
        create_queue.sync_detailed(
            client=client,
            body=NewQueue.from_dict({"id": "workplace", "name": "Workplace", "domain": "it",
                                     "filter": {"assignment_group": "laptop-team"}}),
        ),
        201,
        "queue",
    )
    check(queue_records.sync_detailed(queue.id, client=client), 200, "queue records")

    # TMF621: a trouble ticket is an incident; its listener is a webhook in TMF621's words.
    ticket = check(
        create_ticket.sync_detailed(
            client=client,
            body=TroubleTicketCreate.from_dict(
                {"description": "Customer complaint over last invoice.", "severity": "Urgent",
                 "ticketType": "Bill Dispute", "externalId": "CRM-1"}
            ),
        ),
        201,
        "ticket",
    )
    assert ticket.status == "acknowledged" and ticket.severity == "Urgent", ticket
    moved = check(
        patch_ticket.sync_detailed(
            ticket.id, client=client,
            body=TroubleTicketUpdate.from_dict({"status": "inProgress"}),
        ),
        200,
        "ticket moved",
    )
    assert moved.status == "inProgress"
    assert check(get_ticket.sync_detailed(ticket.id, client=client), 200, "get ticket").id == ticket.id
    listed = check(list_tickets.sync_detailed(client=client, external_id="CRM-1"), 200, "tickets")
    assert [t.id for t in listed] == [ticket.id]
    listener = check(
        register_listener.sync_detailed(
            client=client,
            body=TroubleTicketHubCreate.from_dict(
                {"callback": "http://127.0.0.1:9/listener",
                 "query": "eventType=TroubleTicketStateChangeEvent"}
            ),
        ),
        201,
        "listener",
    )
    check(unregister_listener.sync_detailed(listener.id, client=client), 204, "listener removed")

    # Notifications, webhooks, audit, KPIs, modules.
    rules = check(list_rules.sync_detailed(client=client, domain="it"), 200, "rules")
    assert "approvers-request" in [r.rule.id for r in rules.rules]
    check(list_templates.sync_detailed(client=client, domain="it"), 200, "templates")
    check(deliveries.sync_detailed(client=client), 200, "deliveries")
    hook = check(
        create_webhook.sync_detailed(
            client=client,
            body=NewSubscription.from_dict({"url": "http://127.0.0.1:9/hook",
                                            "events": ["record.created"]}),
        ),
        201,
        "webhook",
    )
    assert hook.id in [w.id for w in check(list_webhooks.sync_detailed(client=client), 200,
                                           "webhooks").webhooks]
    check(delete_webhook.sync_detailed(hook.id, client=client), 200, "webhook removed")
    actions = [e.action for e in check(audit_log.sync_detailed(client=client), 200, "audit").entries]
    assert "catalog.item.create" in actions, actions
    assert check(kpis.sync_detailed(client=client, domain="it"), 200, "kpis") is not None
    bundle = io.BytesIO()
    with tarfile.open(fileobj=bundle, mode="w:gz") as tar:
        manifest = b'id = "hello"\nversion = "0.1.0"\nframework = "custom"\napi = "^0.1"\n'
        info = tarfile.TarInfo("module.toml")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
    bundle.seek(0)
    installed = install_module.sync_detailed(
        client=client, body=File(payload=bundle, file_name="hello.tar.gz",
                                 mime_type="application/gzip")
    )
    assert check(installed, 201, "install").module.id == "hello"
    check(get_module.sync_detailed("hello", client=client), 200, "module")
    assert "hello" in [m.id for m in check(list_modules.sync_detailed(client=client), 200,
                                           "modules").modules]
    revoked = check(revoke_token.sync_detailed(robs.id, client=client), 200, "revoke")
    assert revoked.name == "rob-token"
    gone = list_items.sync_detailed(client=rob)
    assert check(gone, 401, "a revoked token").code == "unauthorized"
    print("client scenario passed: every resource answered as its description says")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
