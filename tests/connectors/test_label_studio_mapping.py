"""Label Studio tasks (its JSON export format, as GET /api/tasks?fields=all also returns it) -> events v2.

Fixtures follow https://labelstud.io/guide/export#Label-Studio-JSON-format-of-annotated-tasks: a task has
`id`, `data` and `annotations`; an annotation has `id`, `completed_by`, `result` [{from_name, to_name,
type, value}], `was_cancelled`, `created_at`, `updated_at` and `lead_time` (seconds)."""
import hashlib

import pytest

from labelbeam.transforms.connectors.label_studio import (
    Control,
    PullSource,
    choose_control,
    parse_controls,
    parse_time_us,
    plan_pull,
    revision_at,
)

CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="animal" toName="text" choice="single">
    <Choice value="cat"/><Choice value="dog"/>
  </Choices>
  <Choices name="tags" toName="text" choice="multiple">
    <Choice value="cute"/><Choice value="blurry"/>
  </Choices>
  <Rating name="quality" toName="text" maxRating="5"/>
  <TextArea name="comment" toName="text"/>
</View>"""
ANIMAL = Control("animal", "Choices")
SOURCE = PullSource(project=7, dataset="pets", control=ANIMAL)
T1 = "2026-05-01T10:00:00.000000Z"
T1_MS = 1_777_629_600_000
T2 = "2026-05-01T10:05:00.250000Z"


def choices(name, *values, kind="choices"):
    return {"id": f"r-{name}", "from_name": name, "to_name": "text", "type": kind, "value": {kind: list(values)}}


def annotation(id, user, result, updated_at=T1, cancelled=False, lead_time=2.5):
    return {"id": id, "completed_by": user, "result": result, "was_cancelled": cancelled, "ground_truth": False,
            "created_at": "2026-05-01T09:59:00.000000Z", "updated_at": updated_at, "lead_time": lead_time,
            "task": 1, "project": 7}


def task(id, *annotations, **data):
    return {"id": id, "data": {"text": "a photo", **data}, "annotations": list(annotations), "predictions": []}


def test_parse_controls_reads_name_tag_and_choice_mode():
    assert parse_controls(CONFIG) == [Control("animal", "Choices"), Control("tags", "Choices", multiple=True),
                                      Control("quality", "Rating"), Control("comment", "TextArea")]


def test_choose_control_takes_the_only_choices_control():
    assert choose_control([ANIMAL, Control("quality", "Rating")], None) == ANIMAL


def test_choose_control_refuses_two_choices_controls_without_from_name():
    with pytest.raises(ValueError, match="2 <Choices> controls .*--from-name"):
        choose_control(parse_controls(CONFIG), None)


def test_choose_control_refuses_an_unknown_or_unsupported_from_name():
    with pytest.raises(ValueError, match="no such control"):
        choose_control(parse_controls(CONFIG), "nope")
    with pytest.raises(ValueError, match="<TextArea>"):
        choose_control(parse_controls(CONFIG), "comment")


def test_choose_control_falls_back_to_the_only_rating_control():
    assert choose_control([Control("quality", "Rating")], None) == Control("quality", "Rating")


def test_parse_time_us_reads_label_studio_timestamps():
    assert parse_time_us(T1) == T1_MS * 1000
    assert parse_time_us(T2) == (T1_MS + 300_250) * 1000
    assert parse_time_us("2026-05-01T10:00:00") == T1_MS * 1000
    assert parse_time_us("yesterday") is None


def test_single_choice_becomes_an_upsert_with_every_field_mapped():
    plan = plan_pull([task(1, annotation(11, 3, [choices("animal", "cat")]))], SOURCE, None)
    expected_id = hashlib.sha256(f"label-studio:7:11:{T1_MS * 1000}".encode()).hexdigest()
    assert plan.events == [{
        "schema_version": 2, "event_id": expected_id, "dataset": "pets", "item_id": "1",
        "annotator_id": "label-studio-user-3", "action": "UPSERT", "label": "cat", "labels": [], "score": None,
        "event_time": T1_MS, "revision": revision_at(T1_MS), "duration_ms": 2500, "confidence": None,
        "metadata": {"source": "label-studio", "project": "7", "task": "1", "annotation": "11"}}]
    assert plan.rejections == []


def test_item_key_takes_the_item_id_from_task_data():
    source = PullSource(7, "pets", ANIMAL, item_key="url")
    plan = plan_pull([task(1, annotation(11, 3, [choices("animal", "cat")]), url="s3://b/1.jpg")], source, None)
    assert plan.events[0]["item_id"] == "s3://b/1.jpg"


def test_missing_item_key_is_rejected_without_an_event():
    source = PullSource(7, "pets", ANIMAL, item_key="url")
    plan = plan_pull([task(1, annotation(11, 3, [choices("animal", "cat")]))], source, None)
    assert plan.events == [] and [r["reason"] for r in plan.rejections] == ["MISSING_ITEM_KEY"]


def test_several_choices_become_a_sorted_labels_list_with_a_null_label():
    plan = plan_pull([task(1, annotation(11, 3, [choices("animal", "dog", "cat")]))], SOURCE, None)
    assert (plan.events[0]["label"], plan.events[0]["labels"]) == (None, ["cat", "dog"])


def test_a_multiple_choice_control_always_gives_labels():
    source = PullSource(7, "pets", Control("tags", "Choices", multiple=True))
    plan = plan_pull([task(1, annotation(11, 3, [choices("tags", "cute")]))], source, None)
    assert (plan.events[0]["label"], plan.events[0]["labels"]) == (None, ["cute"])


def test_a_rating_becomes_a_score():
    source = PullSource(7, "pets", Control("quality", "Rating"))
    result = {"from_name": "quality", "to_name": "text", "type": "rating", "value": {"rating": 4}}
    plan = plan_pull([task(1, annotation(11, 3, [result]))], source, None)
    assert (plan.events[0]["label"], plan.events[0]["labels"], plan.events[0]["score"]) == (None, [], 4.0)


def test_results_of_other_controls_are_left_aside():
    plan = plan_pull([task(1, annotation(11, 3, [choices("animal", "cat"),
                                                 {"from_name": "comment", "type": "textarea",
                                                  "value": {"text": ["nice"]}}]))], SOURCE, None)
    assert plan.events[0]["label"] == "cat" and plan.rejections == []


def test_cancelled_annotation_becomes_a_delete():
    plan = plan_pull([task(1, annotation(11, 3, [], cancelled=True))], SOURCE, None)
    [event] = plan.events
    assert (event["action"], event["label"], event["labels"], event["item_id"], event["annotator_id"]) == \
        ("DELETE", None, [], "1", "label-studio-user-3")
    assert plan.rejections == []


@pytest.mark.parametrize("result, reason", [
    ([], "NO_ANSWER"),
    ([choices("animal")], "NO_ANSWER"),
    ([{"from_name": "animal", "type": "labels", "value": {"labels": ["cat"]}}], "UNSUPPORTED_RESULT_TYPE"),
    ([choices("animal", "cat"), choices("animal", "dog")], "UNSUPPORTED_RESULT_TYPE"),
])
def test_unreadable_answer_is_rejected_and_withdraws_the_vote(result, reason):
    plan = plan_pull([task(1, annotation(11, 3, result))], SOURCE, None)
    [rejection] = plan.rejections
    assert (rejection["reason"], rejection["task"], rejection["annotation"]) == (reason, "1", "11")
    assert rejection["raw"]["id"] == 11 and rejection["detail"]
    assert [event["action"] for event in plan.events] == ["DELETE"]


def test_user_object_in_completed_by_is_read_as_its_id():
    plan = plan_pull([task(1, annotation(11, {"id": 3, "email": "a@b.c"}, [choices("animal", "cat")]))],
                     SOURCE, None)
    assert plan.events[0]["annotator_id"] == "label-studio-user-3"


def test_second_pull_of_the_same_state_writes_nothing():
    tasks = [task(1, annotation(11, 3, [choices("animal", "cat")]), annotation(12, 4, [], cancelled=True))]
    first = plan_pull(tasks, SOURCE, None)
    second = plan_pull(tasks, SOURCE, first.checkpoint)
    assert (second.events, second.rejections, second.checkpoint) == ([], [], first.checkpoint)
    assert second.counts["unchanged"] == 2


def test_updated_annotation_gives_a_new_event_that_wins():
    first = plan_pull([task(1, annotation(11, 3, [choices("animal", "cat")]))], SOURCE, None)
    second = plan_pull([task(1, annotation(11, 3, [choices("animal", "dog")], updated_at=T2))], SOURCE,
                       first.checkpoint)
    [old], [new] = first.events, second.events
    assert new["label"] == "dog" and new["event_id"] != old["event_id"]
    assert (new["revision"], new["event_time"]) > (old["revision"], old["event_time"])


def test_removed_annotation_becomes_a_delete_after_its_last_update():
    first = plan_pull([task(1, annotation(11, 3, [choices("animal", "cat")]))], SOURCE, None)
    second = plan_pull([task(1)], SOURCE, first.checkpoint)
    [delete] = second.events
    assert (delete["action"], delete["item_id"], delete["annotator_id"]) == ("DELETE", "1", "label-studio-user-3")
    assert (delete["revision"], delete["event_time"]) > (first.events[0]["revision"], first.events[0]["event_time"])
    assert second.counts["removed"] == 1 and second.checkpoint["annotations"] == {}


def test_removed_task_deletes_every_vote_on_it():
    first = plan_pull([task(1, annotation(11, 3, [choices("animal", "cat")]),
                            annotation(12, 4, [choices("animal", "dog")]))], SOURCE, None)
    second = plan_pull([], SOURCE, first.checkpoint)
    assert sorted((e["action"], e["annotator_id"]) for e in second.events) == [
        ("DELETE", "label-studio-user-3"), ("DELETE", "label-studio-user-4")]


def test_removing_the_newer_of_two_annotations_restores_the_older_vote():
    older = annotation(11, 3, [choices("animal", "cat")])
    newer = annotation(12, 3, [choices("animal", "dog")], updated_at=T2)
    first = plan_pull([task(1, older, newer)], SOURCE, None)
    second = plan_pull([task(1, older)], SOURCE, first.checkpoint)
    [restored] = second.events
    assert (restored["action"], restored["label"]) == ("UPSERT", "cat")
    assert restored["event_time"] == parse_time_us(T2) // 1000 + 1


def test_removing_an_older_annotation_leaves_the_newer_vote_alone():
    older = annotation(11, 3, [choices("animal", "cat")])
    newer = annotation(12, 3, [choices("animal", "dog")], updated_at=T2)
    first = plan_pull([task(1, older, newer)], SOURCE, None)
    second = plan_pull([task(1, newer)], SOURCE, first.checkpoint)
    assert second.events == [] and second.counts["removed"] == 1


def test_plan_does_not_depend_on_task_or_annotation_order():
    a, b, c = (annotation(11, 3, [choices("animal", "cat")]), annotation(12, 4, [], cancelled=True),
               annotation(13, 5, [{"from_name": "animal", "type": "labels", "value": {}}]))
    one = plan_pull([task(1, a, b), task(2, c)], SOURCE, None)
    other = plan_pull([task(2, c), task(1, b, a)], SOURCE, None)
    assert (one.events, one.rejections, one.checkpoint) == (other.events, other.rejections, other.checkpoint)


def test_checkpoint_of_another_mapping_is_refused():
    first = plan_pull([task(1, annotation(11, 3, [choices("animal", "cat")]))], SOURCE, None)
    with pytest.raises(ValueError, match="pull into a new directory"):
        plan_pull([], PullSource(7, "other", ANIMAL), first.checkpoint)


def test_a_rejection_keeps_the_annotation_without_the_annotators_name_or_email():
    unreadable = {**annotation(11, 3, []), "created_username": "Ada Lovelace a@b.c, 3"}
    [rejection] = plan_pull([task(1, unreadable)], SOURCE, None).rejections
    assert rejection["raw"]["id"] == 11 and rejection["raw"]["completed_by"] == 3
    assert "created_username" not in rejection["raw"] and "a@b.c" not in repr(rejection)
