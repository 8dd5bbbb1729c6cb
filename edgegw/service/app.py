"""Wiring and lifecycle: outbox, forwarder, pipeline, sources; SIGTERM drains in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from typing import Any

from edgegw import __version__
from edgegw.config.model import GatewayConfig
from edgegw.errors import ConfigError, EdgeGwError, OutboxError
from edgegw.outbox.quarantine import QuarantineRecord
from edgegw.outbox.store import NORMAL_SYNC_INTERVAL, Outbox, PendingEvent
from edgegw.pipeline.intake import IntakeQueue
from edgegw.pipeline.process import Pipeline
from edgegw.service.health import GatewayHealth
from edgegw.service.metrics import serve, start_http
from edgegw.service.reload import ConfigChanges, diff_configs, file_sha256
from edgegw.service.sdnotify import Notifier
from edgegw.service.statedir import acquire as acquire_state_dir
from edgegw.sinks.forwarder import Forwarder
from edgegw.sinks.registry import sink_factory, sink_settings
from edgegw.sources.base import Source
from edgegw.sources.registry import build_source

log = logging.getLogger(__name__)
audit = logging.getLogger("edgegw.audit")

INTAKE_MAX_READINGS = 20_000  # queued between sources and committer: about 4 MB
COMMIT_MAX_EVENTS = 1000
ALARM_EVERY = 30.0  # seconds between repeated alarms while the outbox refuses data
RELEASE_EVERY = 2.0  # seconds between looks for released quarantine records
EXPIRE_EVERY = 60.0
STATUS_EVERY = 5.0  # seconds between STATUS= lines to systemd


class Gateway:
    """One running gateway. `run()` returns after a clean stop (see `request_stop`)."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        shutdown_grace: float = 10.0,
        config_path: str | None = None,
    ) -> None:
        # shutdown_grace bounds each stage of the stop (commit, then in-flight publishes); the
        # unit's TimeoutStopSec (30 s) stays above their sum.
        self.config = config
        self.config_path = config_path  # what SIGHUP reads again; None: no reload
        self.shutdown_grace = shutdown_grace
        self.sinks = config.sink_list()
        self.outbox = Outbox(
            config.outbox_path,
            synchronous=config.outbox.synchronous,
            max_rows=config.outbox.max_rows,
            max_age=config.outbox.max_age,
            max_bytes=config.outbox.max_bytes,
            gateway=config.gateway.id,
            gap_topic=config.mqtt.gap_topic.format(**config.topic_fields()),
            sinks=config.sink_selectors(),
        )
        self.sink_settings = sink_settings(config)
        self.forwarders = [
            Forwarder(
                self.outbox,
                sink_factory(sink, self.sink_settings[sink.name]),
                drain_grace=shutdown_grace,
            )
            for sink in self.sinks
        ]
        for sink, forwarder in zip(self.sinks, self.forwarders, strict=True):
            # A sink that selects part of the stream sends less than is committed: its lead
            # says nothing about overload.
            forwarder.throttle_intake = sink.select is None
        self.pipeline = Pipeline(config)
        self.sources: list[Source] = [build_source(source) for source in config.sources]
        self.intake = IntakeQueue(INTAKE_MAX_READINGS)
        self.stop_requested = asyncio.Event()
        self.committed = 0
        self.outbox_alarm: str | None = None  # why the outbox refuses data, while it does
        self.metrics_port: int | None = None  # the bound port of /metrics, once serving
        self.started = asyncio.Event()
        self.started_at = time.monotonic()
        self.notifier = Notifier()
        self.rates: dict[str, float] = {}  # per second over the last STATUS_EVERY
        self.reloads = {"applied": 0, "refused": 0}
        self._reload_requested = asyncio.Event()
        self._readers: dict[str, asyncio.Task[None]] = {}  # source name -> its reading task
        self._group: asyncio.TaskGroup | None = None

    def request_stop(self) -> None:
        self.stop_requested.set()

    def request_reload(self) -> None:
        """SIGHUP: read the config file again and apply it if valid (see `reload`)."""
        self._reload_requested.set()

    async def run(self) -> None:
        # Before anything is opened: a second gateway on this state directory stops here.
        state_lock = acquire_state_dir(self.config.gateway.state_dir, self.config.outbox_path)
        http = self.config.http
        http_server: asyncio.Server | None = None
        try:
            if http is not None:
                http_server = await start_http(self.health, http.host, http.port)
                self.metrics_port = http_server.sockets[0].getsockname()[1]
                host = "127.0.0.1" if http.host in ("0.0.0.0", "::", "") else http.host
                state_lock.note_endpoint(f"http://{host}:{self.metrics_port}")
            await self.outbox.open()
        except BaseException:
            if http_server is not None:
                http_server.close()
            state_lock.release()
            raise
        forwarder_stop = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                for forwarder in self.forwarders:
                    group.create_task(
                        forwarder.run(forwarder_stop), name=f"forwarder:{forwarder.sink.name}"
                    )
                committer = group.create_task(self._commit_forever(), name="committer")
                expirer = group.create_task(self._expire_forever(), name="retention")
                syncer = (
                    group.create_task(self._sync_forever(), name="outbox-sync")
                    if self.config.outbox.synchronous == "normal"
                    else None
                )
                server = (
                    group.create_task(serve(http_server), name="metrics")
                    if http_server is not None
                    else None
                )
                for source in self.sources:
                    self._start_source(source)
                notifier = group.create_task(self._notify_forever(), name="sd-notify")
                reloader = group.create_task(self._reload_forever(), name="reload")
                self.started.set()
                self.notifier.ready(self.status_line())
                log.info(
                    "gateway started id=%s sources=%d outbox_depth=%d",
                    self.config.gateway.id,
                    len(self.sources),
                    self.outbox.depth,
                )
                await self.stop_requested.wait()
                log.info("stopping: sources first, then the outbox, then the broker")
                self.notifier.stopping(f"stopping; {self.status_line()}")
                for forwarder in self.forwarders:
                    forwarder.release_intake()
                await _cancel_until_gone([reloader])  # no reload starts sources from here on
                await _cancel_until_gone(list(self._readers.values()))
                try:
                    await asyncio.wait_for(self.intake.join(), self.shutdown_grace)
                except TimeoutError:
                    log.error(
                        "stopping without committing the last readings: the outbox did not "
                        "accept them within %g s batches=%d",
                        self.shutdown_grace,
                        self.intake.qsize(),
                    )
                committer.cancel()
                await self._commit_lasting(self.pipeline.flush())
                expirer.cancel()
                notifier.cancel()
                if syncer is not None:
                    syncer.cancel()
                if server is not None:
                    server.cancel()
                forwarder_stop.set()
        finally:
            self.notifier.close()
            if http_server is not None:
                http_server.close()  # when the group ended before `serve` took it over
            try:
                await self.outbox.close()
            finally:
                state_lock.release()
            log.info(
                "gateway stopped committed=%d published=%d",
                self.committed,
                self.published,
            )

    def _start_source(self, source: Source) -> None:
        assert self._group is not None
        self._readers[source.name] = self._group.create_task(
            self._read_forever(source), name=f"source:{source.name}"
        )

    async def _reload_forever(self) -> None:
        while True:
            await self._reload_requested.wait()
            self._reload_requested.clear()
            await self.reload()

    async def reload(self) -> bool:
        """Read the config file again; apply it if valid and applicable, else keep the running
        one. Buffered data is never touched: the outbox stays open throughout, sources that
        did not change keep reading, and what changed sources read before they stopped is
        committed under the old pipeline. True when applied."""
        if self.config_path is None:
            log.warning("reload requested, but this gateway was started without a config file")
            return False
        from edgegw.config.isolated import load_config_isolated

        path = self.config_path
        digest = file_sha256(path)
        self.notifier.reloading()
        try:
            try:
                new = await asyncio.to_thread(load_config_isolated, path)
            except ConfigError as exc:
                for issue in exc.issues:
                    log.error("config reload: %s", issue)
                return self._refused(path, digest, f"{len(exc.issues)} problem(s) in the file")
            except EdgeGwError as exc:
                return self._refused(path, digest, str(exc))
            changes = diff_configs(self.config, new)
            if changes.needs_restart:
                return self._refused(
                    path,
                    digest,
                    f"{', '.join(changes.needs_restart)} changed, which takes a restart "
                    "(systemctl restart edgegw)",
                )
            if _sink_shapes(new) != _sink_shapes(self.config):
                return self._refused(
                    path,
                    digest,
                    "the sinks (their names, types or select) changed, which takes a restart "
                    "(systemctl restart edgegw)",
                )
            settings = sink_settings(new)
            changes.mqtt = changes.mqtt or settings != self.sink_settings
            await self._apply(new, changes, settings)
            _refreeze()
            self.reloads["applied"] += 1
            audit.warning(
                "audit: config reloaded path=%s sha256=%s changes=%s",
                path,
                digest,
                changes.describe(),
                extra={"audit": "config-reload", "sha256": digest},
            )
            return True
        finally:
            self.notifier.ready(self.status_line())

    def _refused(self, path: str, digest: str, why: str) -> bool:
        self.reloads["refused"] += 1
        audit.error(
            "audit: config reload refused, the running config stays path=%s sha256=%s why=%s",
            path,
            digest,
            why,
            extra={"audit": "config-reload-refused", "sha256": digest},
        )
        return False

    async def _apply(
        self, new: GatewayConfig, changes: ConfigChanges, settings: dict[str, Any]
    ) -> None:
        stopping = [*changes.removed, *changes.changed]
        await _cancel_until_gone([self._readers.pop(name) for name in stopping])
        if changes.pipeline:
            # Commit what the stopped sources read under the pipeline that knows their tags.
            try:
                await asyncio.wait_for(self.intake.join(), self.shutdown_grace)
            except TimeoutError:
                log.warning("reload: intake still busy after %g s", self.shutdown_grace)
            pipeline = Pipeline(new)
            ended = pipeline.carry_from(self.pipeline)
            self.pipeline = pipeline
            await self._commit_lasting(ended)
        self.config = new
        kept = {s.name: s for s in self.sources if s.name not in stopping}
        self.sources = [kept.get(c.name) or build_source(c) for c in new.sources]
        for source in self.sources:
            if source.name not in self._readers:
                self._start_source(source)
        if changes.retention:
            self.outbox.max_rows = new.outbox.max_rows
            self.outbox.max_age = new.outbox.max_age
            self.outbox.max_bytes = new.outbox.max_bytes
        if changes.mqtt:
            self.outbox.gap_topic = new.mqtt.gap_topic.format(**new.topic_fields())
            for sink, forwarder in zip(new.sink_list(), self.forwarders, strict=True):
                if settings[sink.name] != self.sink_settings[sink.name]:
                    forwarder.reconfigure(sink_factory(sink, settings[sink.name]))
            self.sink_settings = settings

    async def _read_forever(self, source: Source) -> None:
        # Sources turn device faults into bad readings; anything escaping is a bug in a source,
        # and still must not take the other devices down: restart that source after a pause.
        while True:
            try:
                async for batch in source.batches():
                    await self.intake.put(batch)
            except Exception:
                log.exception("source crashed; restarting it in 5 s source=%s", source.name)
                source.status.connected = False
                await asyncio.sleep(5.0)

    async def _commit_forever(self) -> None:
        """Build telemetry and commit it in groups: what arrives during a commit joins the next."""
        while True:
            for forwarder in self.forwarders:
                await forwarder.wait_for_room()
            batches = [await self.intake.get()]
            events, held = self.pipeline.process(batches[0])
            while len(events) < COMMIT_MAX_EVENTS and not self.intake.empty():
                batch = self.intake.get_nowait()
                batches.append(batch)
                more, more_held = self.pipeline.process(batch)
                events.extend(more)
                held.extend(more_held)
            for record in held:
                # A lasting violation is said once when it opens; its updates at debug.
                log.log(
                    logging.DEBUG if record.continues else logging.WARNING,
                    "quarantined kind=%s subject=%s rule=%s reason=%s id=%s trace=%s",
                    record.kind,
                    record.subject,
                    record.rule,
                    record.reason,
                    record.key,
                    record.trace,
                    extra={"trace": record.trace},
                )
            try:
                await self._commit(events, held)
            finally:
                for _ in batches:
                    self.intake.task_done()
            if log.isEnabledFor(logging.DEBUG):
                for event in events:
                    log.debug(
                        "committed seq=%s id=%s schema=%s trace=%s",
                        event.payload.get("seq"),
                        event.id,
                        event.schema,
                        event.trace,
                        extra={"trace": event.trace},
                    )

    async def _commit_lasting(self, records: list[QuarantineRecord]) -> None:
        """The counts of lasting violations not written yet (at a stop, or a reload that takes
        a tag's rule away), bounded like the rest of the stop."""
        if not records:
            return
        try:
            await asyncio.wait_for(self.outbox.append([], records), self.shutdown_grace)
        except (TimeoutError, OutboxError) as exc:
            log.error(
                "the last counts of %d lasting violation(s) are not written: %s",
                len(records),
                exc or "the outbox did not answer in time",
            )

    async def _commit(self, events: list[PendingEvent], held: list[QuarantineRecord]) -> None:
        """Commit, or hold intake until the outbox takes data again (disk full, I/O error):
        the queue fills, the sources wait, nothing read is thrown away, nothing committed is
        touched. One ERROR alarm, repeated every 30 s while it lasts."""
        blocked_since: float | None = None
        last_alarm = 0.0
        while True:
            try:
                self.committed += await self.outbox.append(events, held)
            except OutboxError as exc:
                now = time.monotonic()
                if blocked_since is None:
                    blocked_since = now
                if now - last_alarm >= ALARM_EVERY:
                    last_alarm = now
                    self.outbox_alarm = str(exc)
                    log.error(
                        "ALARM intake stopped: the outbox takes no data for %.0f s; retrying "
                        "every second; nothing read is dropped error=%s",
                        now - blocked_since,
                        exc,
                    )
                await asyncio.sleep(1.0)
                continue
            if blocked_since is not None:
                self.outbox_alarm = None
                log.warning(
                    "outbox takes data again; intake resumed after %.0f s",
                    time.monotonic() - blocked_since,
                )
            return

    async def health(self) -> GatewayHealth:
        """The gateway's state now, from each component's snapshot (see service/health.py)."""
        now = time.monotonic()
        return GatewayHealth(
            gateway=self.config.gateway.id,
            version=__version__,
            uptime=now - self.started_at,
            wall_time=time.time(),
            committed=self.committed,
            quarantined=self.pipeline.quarantined,
            alarm=self.outbox_alarm,
            reloads=dict(self.reloads),
            rates=dict(self.rates),
            outbox=await self.outbox.health(),
            sinks=tuple(forwarder.health() for forwarder in self.forwarders),
            sources=tuple(source.health(now) for source in self.sources),
        )

    @property
    def published(self) -> int:
        """Messages acknowledged, summed over the sinks."""
        return sum(forwarder.status.published for forwarder in self.forwarders)

    def status_line(self) -> str:
        """One line for systemd's STATUS= (shown by `systemctl status edgegw`)."""
        up = sum(source.status.connected for source in self.sources)
        sinks_up = sum(f.status.broker_up for f in self.forwarders)
        broker = (
            ("up" if sinks_up else "down")
            if len(self.forwarders) == 1
            else f"{sinks_up}/{len(self.forwarders)} sinks up"
        )
        return (
            f"{up}/{len(self.sources)} sources up, broker {broker}, outbox {self.outbox.depth}, "
            f"{self.published} published"
        )

    def _update_rates(self, counters: dict[str, float], elapsed: float) -> dict[str, float]:
        now = {
            "published": float(self.published),
            "committed": float(self.committed),
        }
        for source in self.sources:
            now[f"reads:{source.name}"] = float(source.status.reads)
            now[f"errors:{source.name}"] = float(source.status.errors)
        if elapsed > 0:
            self.rates = {
                key: round(max(0.0, value - counters.get(key, value)) / elapsed, 1)
                for key, value in now.items()
            }
        return now

    async def _notify_forever(self) -> None:
        """WATCHDOG=1 at half of WatchdogSec, from the event loop itself: a stalled loop stops
        the pings and systemd restarts the service; STATUS= every few seconds."""
        interval = self.notifier.watchdog_interval
        tick = min(interval, STATUS_EVERY) if interval is not None else STATUS_EVERY
        last_status = time.monotonic()
        counters = self._update_rates({}, 0.0)
        while True:
            await asyncio.sleep(tick)
            if interval is not None:
                self.notifier.watchdog()
            now = time.monotonic()
            if now - last_status >= STATUS_EVERY:
                counters = self._update_rates(counters, now - last_status)
                last_status = now
                self.notifier.status(self.status_line())

    async def _sync_forever(self) -> None:
        """synchronous=normal: commits are safe from a process crash at once and from a
        power loss once the WAL is synced; do that every NORMAL_SYNC_INTERVAL."""
        while True:
            await asyncio.sleep(NORMAL_SYNC_INTERVAL)
            try:
                await self.outbox.sync()
            except OutboxError as exc:
                log.error("outbox sync failed error=%s", exc)

    async def _expire_forever(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(RELEASE_EVERY)
            ticks += 1
            try:
                # Operators release quarantined events with the CLI, which only marks them:
                # seq numbers are this process's to assign.
                await self.outbox.move_released()
                if ticks * RELEASE_EVERY >= EXPIRE_EVERY:
                    ticks = 0
                    await self.outbox.expire()
            except OutboxError as exc:
                log.error("retention pass failed error=%s", exc)


async def _cancel_until_gone(tasks: list[asyncio.Task[None]]) -> None:
    # Cancel until they are gone: on Python 3.11 asyncio.wait_for (used by pymodbus and our
    # driver) swallows a cancellation whose reply lands in the same loop step, and a source
    # would then keep polling (seen in the bench).
    running = set(tasks)
    while running:
        for task in running:
            task.cancel()
        _, running = await asyncio.wait(running, timeout=0.5)


async def run_gateway(config: GatewayConfig, config_path: str | None = None) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP reloads `config_path`."""
    gateway = Gateway(config, config_path=config_path)
    loop = asyncio.get_running_loop()
    handlers = {
        signal.SIGTERM: gateway.request_stop,
        signal.SIGINT: gateway.request_stop,
        signal.SIGHUP: gateway.request_reload,
    }
    for signum, handler in handlers.items():
        loop.add_signal_handler(signum, handler)
    if config_path is not None:
        digest = file_sha256(config_path)
        audit.warning(
            "audit: config loaded path=%s sha256=%s sources=%d tags=%d events=%d",
            config_path,
            digest,
            len(config.sources),
            sum(len(source.tags) for source in config.data_sources()),
            len(config.events),
            extra={"audit": "config-load", "sha256": digest},
        )
    freezer = asyncio.create_task(_freeze_after_start(gateway), name="gc-freeze")
    try:
        await gateway.run()
    finally:
        freezer.cancel()
        for signum in handlers:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)


async def _freeze_after_start(gateway: Gateway) -> None:
    """What exists once the gateway runs (modules, the config model, tag tables, clients)
    lives as long as the process: moved out of the cyclic collector's way, so that its
    collections, frequent at tens of thousands of values per second, stop walking it. Only in
    the daemon (`edgegw run`): a process that runs many gateways (the tests) would keep the
    garbage of the earlier ones."""
    await gateway.started.wait()
    gc.collect()  # what start-up left behind is not kept for ever
    gc.freeze()


def _refreeze() -> None:
    """After a reload, when the daemon froze its start-up objects (`_freeze_after_start`):
    what the reload replaced (old sources, clients and their tasks) was frozen with them and
    would never be collected; it holds cycles. Collected, and what lives on frozen again."""
    if gc.get_freeze_count():
        gc.unfreeze()
        gc.collect()
        gc.freeze()


def _sink_shapes(config: GatewayConfig) -> list[tuple[str, str, Any]]:
    return [(sink.name, sink.type, sink.select) for sink in config.sink_list()]
