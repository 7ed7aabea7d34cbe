"""FC-10 (in part): a tick while a sync run is unfinished starts no second run."""

from dagster import DagsterRunStatus, build_schedule_context, instance_for_test

from dagster_project.definitions import defs


def test_tick_is_skipped_while_a_sync_run_is_unfinished():
    schedule = defs.resolve_schedule_def("incremental_sync")
    job = defs.resolve_job_def("sync_job")
    with instance_for_test() as instance:
        first = schedule.evaluate_tick(build_schedule_context(instance=instance))
        assert len(first.run_requests) == 1

        run = instance.create_run_for_job(job_def=job, status=DagsterRunStatus.STARTED)
        skipped = schedule.evaluate_tick(build_schedule_context(instance=instance))
        assert not skipped.run_requests
        assert run.run_id in skipped.skip_message

        instance.report_run_failed(run)
        after = schedule.evaluate_tick(build_schedule_context(instance=instance))
        assert len(after.run_requests) == 1
