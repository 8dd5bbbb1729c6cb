"""Wiring and lifecycle: outbox, forwarder, pipeline, sources; SIGTERM drains in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time

from edgegw.config.model import GatewayConfig
from edgegw.errors import OutboxError
from edgegw.events.schemas import announcements
from edgegw.forwarder import BatchSettings, Forwarder
from edgegw.intake import IntakeQueue
from edgegw.metrics import serve
from edgegw.outbox import NORMAL_SYNC_INTERVAL, Outbox, PendingEvent
from edgegw.pipeline import Pipeline
from edgegw.quarantine import QuarantineRecord
from edgegw.sdnotify import Notifier
from edgegw.sinks.mqtt import MqttSettings
from edgegw.sources.base import Source
from edgegw.sources.registry import build_source

log = logging.getLogger(__name__)

INTAKE_MAX_READINGS = 20_000  # queued between sources and committer: about 4 MB
COMMIT_MAX_EVENTS = 1000
ALARM_EVERY = 30.0  # seconds between repeated alarms while the outbox refuses data
RELEASE_EVERY = 2.0  # seconds between looks for released quarantine records
EXPIRE_EVERY = 60.0
STATUS_EVERY = 5.0  # seconds between STATUS= lines to systemd


def mqtt_settings(config: GatewayConfig) -> MqttSettings:
    mqtt = config.mqtt
    status_topic = mqtt.status_topic.format(**config.topic_fields())
    return MqttSettings(
        host=mqtt.host,
        port=mqtt.port,
        client_id=config.client_id,
        protocol=mqtt.version,
        keepalive=int(mqtt.keepalive),
        connect_timeout=mqtt.connect_timeout,
        status_topic=status_topic,
    )


class Gateway:
    """One running gateway. `run()` returns after a clean stop (see `request_stop`)."""

    def __init__(self, config: GatewayConfig, *, shutdown_grace: float = 10.0) -> None:
        # shutdown_grace bounds each stage of the stop (commit, then in-flight publishes); the
        # unit's TimeoutStopSec (30 s) stays above their sum.
        self.config = config
        self.shutdown_grace = shutdown_grace
        self.outbox = Outbox(
            config.outbox_path,
            synchronous=config.outbox.synchronous,
            max_rows=config.outbox.max_rows,
            max_age=config.outbox.max_age,
            max_bytes=config.outbox.max_bytes,
            gateway=config.gateway.id,
            gap_topic=config.mqtt.gap_topic.format(**config.topic_fields()),
        )
        self.forwarder = Forwarder(
            self.outbox,
            mqtt_settings(config),
            qos=config.mqtt.qos,
            window=config.mqtt.inflight,
            drain_grace=shutdown_grace,
            announcements=announcements(config),
            batch=batch_settings(config),
        )
        self.pipeline = Pipeline(config)
        self.sources: list[Source] = [build_source(source) for source in config.sources]
        self.intake = IntakeQueue(INTAKE_MAX_READINGS)
        self.stop_requested = asyncio.Event()
        self.committed = 0
        self.outbox_alarm: str | None = None  # why the outbox refuses data, while it does
        self.metrics_port: int | None = None  # the bound port of /metrics, once serving
        self.started = asyncio.Event()
        self.notifier = Notifier()

    def _metrics_bound(self, port: int) -> None:
        self.metrics_port = port

    def request_stop(self) -> None:
        self.stop_requested.set()

    async def run(self) -> None:
        await self.outbox.open()
        forwarder_stop = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.forwarder.run(forwarder_stop), name="forwarder")
                committer = group.create_task(self._commit_forever(), name="committer")
                expirer = group.create_task(self._expire_forever(), name="retention")
                syncer = (
                    group.create_task(self._sync_forever(), name="outbox-sync")
                    if self.config.outbox.synchronous == "normal"
                    else None
                )
                http = self.config.http
                server = (
                    group.create_task(
                        serve(self, http.host, http.port, self._metrics_bound), name="metrics"
                    )
                    if http is not None
                    else None
                )
                readers = [
                    group.create_task(self._read_forever(source), name=f"source:{source.name}")
                    for source in self.sources
                ]
                notifier = group.create_task(self._notify_forever(), name="sd-notify")
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
                self.forwarder.release_intake()
                # Cancel until they are gone: on Python 3.11 asyncio.wait_for (used by pymodbus
                # and our driver) swallows a cancellation whose reply lands in the same loop
                # step, and a source would then keep polling after SIGTERM (seen in the bench).
                running = set(readers)
                while running:
                    for reader in running:
                        reader.cancel()
                    _, running = await asyncio.wait(running, timeout=0.5)
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
                expirer.cancel()
                notifier.cancel()
                if syncer is not None:
                    syncer.cancel()
                if server is not None:
                    server.cancel()
                forwarder_stop.set()
        finally:
            self.notifier.close()
            await self.outbox.close()
            log.info(
                "gateway stopped committed=%d published=%d",
                self.committed,
                self.forwarder.status.published,
            )

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
            await self.forwarder.wait_for_room()
            batches = [await self.intake.get()]
            events, held = self.pipeline.process(batches[0])
            while len(events) < COMMIT_MAX_EVENTS and not self.intake.empty():
                batch = self.intake.get_nowait()
                batches.append(batch)
                more, more_held = self.pipeline.process(batch)
                events.extend(more)
                held.extend(more_held)
            for record in held:
                log.warning(
                    "quarantined kind=%s subject=%s rule=%s reason=%s id=%s trace=%s",
                    record.kind,
                    record.subject,
                    record.rule,
                    record.reason,
                    record.key,
                    record.trace,
                )
            try:
                await self._commit(events, held)
            finally:
                for _ in batches:
                    self.intake.task_done()

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

    def status_line(self) -> str:
        """One line for systemd's STATUS= (shown by `systemctl status edgegw`)."""
        up = sum(source.status.connected for source in self.sources)
        broker = "up" if self.forwarder.status.broker_up else "down"
        return (
            f"{up}/{len(self.sources)} sources up, broker {broker}, outbox {self.outbox.depth}, "
            f"{self.forwarder.status.published} published"
        )

    async def _notify_forever(self) -> None:
        """WATCHDOG=1 at half of WatchdogSec, from the event loop itself: a stalled loop stops
        the pings and systemd restarts the service; STATUS= every few seconds."""
        interval = self.notifier.watchdog_interval
        tick = min(interval, STATUS_EVERY) if interval is not None else STATUS_EVERY
        last_status = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            if interval is not None:
                self.notifier.watchdog()
            if time.monotonic() - last_status >= STATUS_EVERY:
                last_status = time.monotonic()
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


def batch_settings(config: GatewayConfig) -> BatchSettings | None:
    batch = config.mqtt.batch
    if batch is None:
        return None
    fields = config.topic_fields()
    # Fill every placeholder but {source}, which the forwarder fills per message.
    topic = batch.topic.replace("{source}", "\x00").format(**fields).replace("\x00", "{source}")
    return BatchSettings(batch.max_values, batch.max_delay, topic, config.gateway.id)


async def run_gateway(config: GatewayConfig) -> None:
    """Run until SIGTERM or SIGINT."""
    gateway = Gateway(config)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, gateway.request_stop)
    try:
        await gateway.run()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
