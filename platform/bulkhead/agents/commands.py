"""`bulkhead agent ...`: the long-running agents supervisord starts on the hosts (one job each)."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from bulkhead.agents.registry import Registry


def _ssm(args: argparse.Namespace):
    """SSM of the host's region: through `--endpoint-url` when given (the local cloud), else the SDK's own
    configuration (the instance role; on a site with its own endpoint, AWS_CONFIG_FILE)."""
    return _client(args, "ssm", args.region)


def _client(args: argparse.Namespace, service: str, region: str, credentials: dict | None = None):
    """A client of `service` in `region`, short on time and retries: an agent's next round is its retry."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1})
    keys = {}
    if credentials:
        keys = {"aws_access_key_id": credentials["AccessKeyId"],
                "aws_secret_access_key": credentials["SecretAccessKey"],
                "aws_session_token": credentials["SessionToken"]}  # fmt: skip
    return boto3.client(service, region_name=region, endpoint_url=args.endpoint_url or None, config=config, **keys)


def cmd_metrics(args: argparse.Namespace) -> int:
    from bulkhead.agents.metrics import HeartbeatDestination, MetricsAgent, Sources

    sources = Sources(haproxy_socket=Path(args.haproxy_socket) if args.haproxy_socket else None,
                      dyno_state=Path(args.dyno_state) if args.dyno_state else None, postgres=args.postgres,
                      registry=args.registry.split(",") if args.registry else [])  # fmt: skip
    cloudwatch = _client(args, "cloudwatch", args.region)

    def status_account(service: str, region: str, granted: dict):
        return _client(args, service, region, granted)

    heartbeat = HeartbeatDestination(_ssm(args), _client(args, "sts", args.region), args.region, status_account)
    agent = MetricsAgent(args.region, args.host, sources, Path(args.state), lambda: cloudwatch, heartbeat,
                         interval=args.interval)  # fmt: skip
    _stop_on_signals(agent)
    agent.run()
    return 0


def _stop_on_signals(agent) -> None:
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: agent.stop())


def cmd_router_sync(args: argparse.Namespace) -> int:
    from bulkhead.agents.haproxy import Haproxy, Settings
    from bulkhead.agents.router_sync import RouterSync
    from bulkhead.ops.rods import Reader

    settings = Settings(config=Path(args.haproxy_config), routes=Path(args.routes_file),
                        admin_socket=Path(args.admin_socket), master_socket=Path(args.master_socket),
                        max_connections_per_server=args.max_connections_per_server)  # fmt: skip
    rods = Reader(_ssm(args), args.region).poll_in_background()
    agent = RouterSync(Registry(args.registry.split(",")), Haproxy(settings), args.region, Path(args.state),
                       rods=rods, default_app=args.default_app)  # fmt: skip
    _stop_on_signals(agent)
    agent.run()
    return 0


def cmd_dyno_manager(args: argparse.Namespace) -> int:
    from bulkhead.agents import dynos
    from bulkhead.agents.dyno_manager import DynoManager, Host, Supervisor
    from bulkhead.agents.dynos import Breaker
    from bulkhead.ops.rods import Reader

    host = Host(args.host, args.address, args.az, args.cell, args.region)
    rods = Reader(_ssm(args), args.region).poll_in_background()
    agent = DynoManager(Registry(args.registry.split(",")), host, Supervisor(Path(args.conf_dir), Path(args.log_dir)),
                        Path(args.apps_dir), Path(args.state), rods=rods,
                        user=args.user, bulkhead_cli=args.bulkhead_cli, boot_timeout=args.boot_timeout,
                        breaker=Breaker(slow_s=args.slow_boot, cooldown_s=args.breaker_cooldown))  # fmt: skip
    for declaration in args.declare:
        agent.declare(dynos.parse_declaration(declaration))
    _stop_on_signals(agent)
    agent.run()
    return 0


def cmd_singleton(args: argparse.Namespace) -> int:
    from bulkhead.agents.singleton import Singleton
    from bulkhead.errors import UsageError

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise UsageError("give the command to run after --, e.g. `bulkhead agent singleton --name clock -- ./clock`")
    agent = Singleton(Registry(args.registry.split(",")), args.region, args.name, command, ttl=args.ttl,
                      margin=args.margin, holder=args.holder)  # fmt: skip
    _stop_on_signals(agent)
    return agent.run()


def register(commands: argparse._SubParsersAction) -> None:
    """Add `bulkhead agent ...` to the command line."""
    group = commands.add_parser("agent", help="run one of the host agents (supervisord starts them on the hosts)",
                                description="The agents that run on the hosts. Each logs JSON lines (with "
                                "--log-json) and writes its figures to a state file that the metrics agent and "
                                "drills read.")  # fmt: skip
    verbs = group.add_subparsers(dest="verb", required=True, metavar="AGENT")
    router = verbs.add_parser(
        "router-sync", help="keep this router's HAProxy in step with the route registry",
        description="Watches the region's route records in etcd, skips and counts any record that does not "
        "validate, and applies the rest to HAProxy through its runtime API (or a checked reload). It never "
        "exits on a bad record or a lost registry; when HAProxy refuses a change it keeps the last good table. "
        "The router-read-only rod makes it ignore the registry.",
    )  # fmt: skip
    router.add_argument(
        "--haproxy-config",
        default="/var/lib/bulkhead/router/check.cfg",
        help="the settings a new routes file is checked against (haproxy -c)",
    )
    router.add_argument("--routes-file", default="/var/lib/bulkhead/router/routes.cfg", help="the file this agent owns")
    router.add_argument("--admin-socket", default="/var/lib/bulkhead/router/admin.sock")
    router.add_argument("--master-socket", default="/var/lib/bulkhead/router/master.sock")
    router.add_argument("--max-connections-per-server", type=int, default=64)
    router.add_argument("--default-app", default="sample", help="the app served when the Host header names none")
    router.add_argument("--state", default="/var/lib/bulkhead/router/state.json",
                        help="where the agent writes its figures every second")  # fmt: skip
    router.set_defaults(handler=cmd_router_sync)
    manager = verbs.add_parser(
        "dyno-manager", help="run this dyno host's share of every app's processes, and publish their routes",
        description="Reads each app's desired state from the registry, takes this host's share, and launches and "
        "stops app processes under supervisord. Launches per minute per cell are capped by the dyno-launch-rate "
        "rod; a breaker stops launches while boots are slow. A web process's route is published once it answers "
        "HTTP, under the manager's lease. app-management-lockdown stops voluntary moves; crashed processes are "
        "still replaced.",
    )  # fmt: skip
    manager.add_argument("--host", required=True, help="this host's name in routes (its instance id)")
    manager.add_argument("--address", required=True, help="this host's private address (apps bind to it)")
    manager.add_argument("--az", required=True)
    manager.add_argument("--cell", required=True, help="this host's cell: launches are counted per cell")
    manager.add_argument("--apps-dir", default="/srv/bulkhead/apps", help="one directory per app, with a Procfile")
    manager.add_argument("--conf-dir", default="/etc/supervisor/conf.d", help="where dyno programs are written")
    manager.add_argument("--log-dir", default="/var/log/bulkhead")
    manager.add_argument("--user", default="bulkhead", help="the user app processes run as")
    manager.add_argument("--bulkhead-cli", default="bulkhead", help="the command singletons are fenced with")
    manager.add_argument("--boot-timeout", type=float, default=60.0, help="seconds a boot may take (default 60)")
    manager.add_argument("--slow-boot", type=float, default=10.0,
                         help="median boot seconds above which the breaker opens (default 10)")  # fmt: skip
    manager.add_argument("--breaker-cooldown", type=float, default=30.0,
                         help="seconds the breaker stays open before one probe launch (default 30)")  # fmt: skip
    manager.add_argument("--state", default="/var/lib/bulkhead/dyno-manager/state.json")
    manager.add_argument("--declare", action="append", default=[], metavar="APP:TYPE=N,...",
                         help="declare an app so unless declared (e.g. sample:web=3,clock=1)")  # fmt: skip
    manager.set_defaults(handler=cmd_dyno_manager)
    single = verbs.add_parser(
        "singleton", help="run a command only while holding the region's lease for it (fencing)",
        description="Takes the singleton's key in the registry under a lease, runs the command with FENCING_TOKEN "
        "(a number that grows with every new holder), renews the lease, and stops the command before the lease "
        "could expire when it cannot renew it.",
    )  # fmt: skip
    single.add_argument("--name", required=True, help="the singleton's name, e.g. sample-clock")
    single.add_argument("--holder", help="who holds it, as the registry shows (default: the host name)")
    single.add_argument("--ttl", type=int, default=10, help="the lease's seconds (default 10)")
    single.add_argument("--margin", type=float, default=3.0,
                        help="seconds before the lease could expire that the command stops (default 3)")  # fmt: skip
    single.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    single.set_defaults(handler=cmd_singleton)
    metrics = verbs.add_parser(
        "metrics", help="publish this host's figures to CloudWatch and its heartbeat to the status region",
        description="Every --interval seconds: router requests and 5xx (--haproxy-socket), dyno boot seconds "
        "(--dyno-state), the primary's WAL archive lag (--postgres) and unhealthy etcd members (--registry), into "
        "the region's CloudWatch; and a heartbeat into the status account's, through the role named in SSM "
        "/bulkhead/<region>/heartbeat. A source that fails is logged and counted; the heartbeat goes on.",
    )  # fmt: skip
    metrics.add_argument("--region", required=True, help="this host's region")
    metrics.add_argument("--host", required=True, help="this host's name (in its logs and state)")
    metrics.add_argument("--haproxy-socket", help="HAProxy's stats socket (routers)")
    metrics.add_argument("--dyno-state", help="the dyno manager's state file (dyno hosts)")
    metrics.add_argument("--postgres", metavar="CONNINFO", help="the local PostgreSQL (database hosts)")
    metrics.add_argument("--registry", metavar="HOST[:PORT],...", help="the etcd members to count (database hosts)")
    metrics.add_argument("--interval", type=float, default=10.0, help="seconds between rounds (default 10)")
    metrics.add_argument("--state", default="/var/lib/bulkhead/metrics/state.json",
                         help="where the agent writes its figures each round")  # fmt: skip
    metrics.set_defaults(handler=cmd_metrics)
    for parser in (router, manager, metrics):
        parser.add_argument("--endpoint-url", help="the cloud's endpoint, when not AWS's (the local cloud)")
    for parser in (router, manager, single):
        parser.add_argument("--region", required=True, help="this host's region")
        parser.add_argument("--registry", required=True, metavar="HOST[:PORT],...",
                            help="the etcd members (the region's database hosts), port 2379 by default")  # fmt: skip
