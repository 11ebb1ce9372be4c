"""nova-compute test harness: the real nova.virt.ironic.driver.IronicDriver,
in native-threading mode (eventlet's with OS_NOVA_DISABLE_EVENTLET_PATCHING=0,
nova's own switch), driven by commands on stdin.

Installed by the test bed as an executable named `nova-compute` whose
shebang is the nova venv's python, so its comm is `nova-compute` as in
production. Every HTTP request the driver sends is logged, as JSON lines,
to --request-log (from urllib3's own debug log): the tests' ground truth.

Commands (one per line), each answered by one JSON line on stdout:
  nodes                        refresh the node cache (GET /v1/nodes)
  spawn NODE                   create an instance on NODE and deploy it
  power_off|power_on|reboot|destroy INSTANCE
  refresh-every SECONDS        refresh the node cache in a thread, like
                               update_available_resource does
  cycle NODE...                spawn, power off/on, reboot, destroy on each
                               node, over and over, in a thread
  stop-cycle                   end the cycle after its round; answered
                               (`cycle-stopped`) once the thread is done
  exit

Faults the end-to-end scenarios inject (real patterns of the real libraries):
  leak-connections-every S     every S s a new openstacksdk Connection lists
                               the nodes and is dropped without close()
  leak-executors-every S       every S s a new futurist ThreadPoolExecutor
                               lists the nodes and is never shut down
  leak-files-every S N         every S s N more files opened and kept
  rlimit N                     RLIMIT_NOFILE soft limit to N
  conflict INSTANCE N          N threads power the instance off at once
  log-auth-headers             one debug line with the client's auth headers
                               as they are (the token in clear in the log)

nova's own logging is set up as nova-compute's (oslo.log to the log_file of
nova.conf, debug on), with keystoneauth's request lines (token hashed).
"""
import argparse
import ctypes
import json
import logging
import os
import resource
import sys
import threading
import uuid

from nova import monkey_patch

monkey_patch.patch(backend="threading")

from nova import config, context as nova_context, exception, objects, utils  # noqa: E402
import nova.conf  # noqa: E402
from nova.network import model as network_model  # noqa: E402
from nova.objects import fields  # noqa: E402
from nova.virt import fake  # noqa: E402
from nova.virt.ironic import driver as ironic_driver  # noqa: E402
import futurist  # noqa: E402  (after the patch: it imports eventlet when present)
from oslo_log import log as oslo_logging  # noqa: E402

HOST = "leakmon-compute"
LOG = oslo_logging.getLogger(__name__)
IMAGE_ID = "6e5a2b8a-3f1c-4d6e-9a0b-1c2d3e4f5a6b"


class RequestLog(logging.Handler):
    """Writes each request urllib3 reports (after its response) as JSON."""

    def __init__(self, path):
        super().__init__(logging.DEBUG)
        # logging.Handler.handle() holds the handler's own lock around emit().
        self.out = open(path, "a", buffering=1)

    def emit(self, record):
        args = record.args
        # '%s://%s:%s "%s %s %s" %s %s' % (scheme, host, port, method, url, version, status, length)
        if not isinstance(args, tuple) or len(args) != 8:
            return
        scheme, host, port, method, path, _version, status, _length = args
        line = {"scheme": scheme, "host": host, "port": port, "method": method, "path": path,
                "status": status, "thread": os_thread_id()}
        self.out.write(json.dumps(line) + "\n")


_libc = ctypes.CDLL(None, use_errno=True)


def os_thread_id():
    """The kernel's id of the calling OS thread, as the daemon sees it. (Under
    eventlet's monkey patching threading.Thread objects are green threads
    without a native_id; they all run on one OS thread.)"""
    return _libc.syscall(186)  # SYS_gettid on x86_64


def say(**event):
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class Harness:
    def __init__(self, fake_token=None):
        self.ctx = nova_context.get_admin_context()
        self.driver = ironic_driver.IronicDriver(fake.FakeVirtAPI())
        self.driver.init_host(HOST)
        if fake_token:
            # keystone-less set-ups send only keystoneauth's placeholder
            # token `notused` (its `none` plugin): make that plugin hand out
            # a real-looking token instead, as keystone would, so that its
            # handling can be tested. (additional_headers cannot: the auth
            # plugin's X-Auth-Token takes precedence.)
            auth = self.driver.ironic_connection.session.auth
            auth.get_token = lambda *args, **kwargs: fake_token
        try:
            self.service = objects.Service.get_by_compute_host(self.ctx, HOST)
        except exception.NotFound:
            self.service = objects.Service(self.ctx, host=HOST, binary="nova-compute", topic="compute",
                                           report_count=0)
            self.service.create()
        self.compute_nodes = {}
        self.instances = {}
        # What the injected faults hold on to, as the leaky code would.
        self.leaked = []
        self.cycling = threading.Event()
        self.cycle_thread = None

    def compute_node(self, node):
        if node not in self.compute_nodes:
            try:
                self.compute_nodes[node] = objects.ComputeNode.get_by_uuid(self.ctx, node)
                return self.compute_nodes[node]
            except exception.NotFound:
                pass
            cn = objects.ComputeNode(
                self.ctx, host=HOST, hypervisor_hostname=node, uuid=node, service_id=self.service.id,
                vcpus=2, memory_mb=1024, local_gb=10, vcpus_used=0, memory_mb_used=0, local_gb_used=0,
                hypervisor_type="ironic", hypervisor_version=1, cpu_info="", disk_available_least=10,
                free_ram_mb=1024, free_disk_gb=10, current_workload=0, running_vms=0)
            cn.create()
            self.compute_nodes[node] = cn
        return self.compute_nodes[node]

    def nodes(self):
        return self.driver.get_available_nodes(refresh=True)

    def spawn(self, node):
        cn = self.compute_node(node)
        flavor = objects.Flavor(name="baremetal", memory_mb=1024, vcpus=2, root_gb=10, ephemeral_gb=0,
                                swap=0, extra_specs={}, flavorid="bm")
        instance = objects.Instance(
            self.ctx, uuid=str(uuid.uuid4()), project_id="leakmon", user_id="leakmon", host=HOST, node=node,
            # A file:// image: standalone Ironic validates it on this host, no Glance needed.
            compute_id=cn.id, flavor=flavor, instance_type_id=1, image_ref="file:///etc/hostname",
            vm_state="building", power_state=0, root_gb=10, ephemeral_gb=0, memory_mb=1024, vcpus=2,
            display_name="leakmon", config_drive="", metadata={}, system_metadata={})
        instance.create()
        image_meta = objects.ImageMeta.from_dict({"id": IMAGE_ID, "properties": {}})
        # The compute manager reserves the node (instance_uuid) before spawning.
        self.driver.prepare_for_spawn(instance)
        self.driver.spawn(self.ctx, instance, image_meta, [], None, {},
                          network_info=network_model.NetworkInfo([]))
        self.instances[instance.uuid] = instance
        return instance.uuid

    def act(self, action, uuid_):
        instance = self.instances[uuid_]
        network_info = network_model.NetworkInfo([])
        if action == "power_off":
            self.driver.power_off(instance)
        elif action == "power_on":
            self.driver.power_on(self.ctx, instance, network_info)
        elif action == "reboot":
            self.driver.reboot(self.ctx, instance, network_info, "SOFT")
        elif action == "destroy":
            self.driver.destroy(self.ctx, instance, network_info)
            del self.instances[uuid_]

    def refresh_every(self, seconds):
        def loop():
            while True:
                try:
                    self.nodes()
                except Exception as e:  # the periodic task logs and carries on
                    say(event="refresh_failed", error=str(e))
                threading.Event().wait(seconds)

        threading.Thread(target=loop, name="periodic", daemon=True).start()

    def every(self, seconds, name, work):
        def loop():
            while True:
                try:
                    work()
                except Exception as e:
                    say(event="fault_failed", fault=name, error=str(e))
                threading.Event().wait(seconds)

        threading.Thread(target=loop, name=name, daemon=True).start()

    def leak_connection(self):
        # A new SDK connection per call, never closed (nova-ironic.md pattern 1).
        conn = utils.get_sdk_adapter("baremetal", admin=True, check_service=True)
        list(conn.nodes(fields=("uuid",)))
        self.leaked.append(conn)

    def leak_executor(self):
        # An executor per call, never shut down (pattern 4).
        executor = futurist.ThreadPoolExecutor(max_workers=1)
        executor.submit(self.nodes).result()
        self.leaked.append(executor)

    def leak_files(self, count):
        for _ in range(count):
            self.leaked.append(open("/etc/hostname"))

    def cycle(self, nodes):
        self.cycling.set()

        def loop():
            rounds = 0
            while self.cycling.is_set():
                for node in nodes:
                    try:
                        instance = self.spawn(node)
                        for action in ("power_off", "power_on", "reboot", "destroy"):
                            self.act(action, instance)
                    except Exception as e:
                        say(event="cycle_failed", node=node, error=str(e))
                        threading.Event().wait(1)
                rounds += 1
                say(event="cycled", rounds=rounds)

        self.cycle_thread = threading.Thread(target=loop, name="cycle", daemon=True)
        self.cycle_thread.start()

    def stop_cycle(self):
        self.cycling.clear()
        if self.cycle_thread is not None:
            self.cycle_thread.join()

    def log_auth_headers(self):
        """The bug security reviews warn of: a debug line that logs the Ironic
        client's auth headers as they are (keystoneauth's own lines hash the
        token)."""
        LOG.debug("Ironic client auth headers: %s", self.driver.ironic_connection.session.get_auth_headers())

    def conflict(self, uuid_, count):
        instance = self.instances[uuid_]
        results = []

        def power_off():
            try:
                self.driver.power_off(instance)
                results.append("ok")
            except Exception as e:
                results.append(type(e).__name__)

        threads = [threading.Thread(target=power_off) for _ in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results


def commands():
    """stdin's lines. Under eventlet, waiting for one is a wait in its hub:
    a blocking read would stall every green thread (the periodic faults)
    until the next command."""
    if monkey_patch.is_patched():
        from eventlet import hubs

        def wait_readable():
            hubs.trampoline(0, read=True)
    else:
        def wait_readable():
            pass  # the read blocks this thread only
    pending = b""
    while True:
        while b"\n" not in pending:
            wait_readable()
            chunk = os.read(0, 4096)
            if not chunk:
                return
            pending += chunk
        line, pending = pending.split(b"\n", 1)
        yield line.decode()


def serve(harness):
    say(event="ready", pid=os.getpid())
    for line in commands():
        words = line.split()
        if not words:
            continue
        command, args = words[0], words[1:]
        try:
            if command == "exit":
                return
            if command == "nodes":
                say(event="nodes", nodes=sorted(harness.nodes()))
            elif command == "spawn":
                say(event="spawned", instance=harness.spawn(args[0]), node=args[0])
            elif command in ("power_off", "power_on", "reboot", "destroy"):
                harness.act(command, args[0])
                say(event=command, instance=args[0])
            elif command == "refresh-every":
                harness.refresh_every(float(args[0]))
                say(event="refreshing", seconds=float(args[0]))
            elif command == "cycle":
                harness.cycle(args)
                say(event="cycling", nodes=args)
            elif command == "stop-cycle":
                harness.stop_cycle()
                say(event="cycle-stopped")
            elif command == "leak-connections-every":
                harness.every(float(args[0]), "leak-connections", harness.leak_connection)
                say(event="leaking", fault="connections")
            elif command == "leak-executors-every":
                harness.every(float(args[0]), "leak-executors", harness.leak_executor)
                say(event="leaking", fault="executors")
            elif command == "leak-files-every":
                count = int(args[1])
                harness.every(float(args[0]), "leak-files", lambda: harness.leak_files(count))
                say(event="leaking", fault="files")
            elif command == "rlimit":
                _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                resource.setrlimit(resource.RLIMIT_NOFILE, (int(args[0]), hard))
                say(event="rlimit", soft=int(args[0]))
            elif command == "log-auth-headers":
                harness.log_auth_headers()
                say(event="logged")
            elif command == "conflict":
                say(event="conflicted", results=harness.conflict(args[0], int(args[1])))
            else:
                say(event="error", error=f"unknown command {command}")
        except (exception.NovaException, KeyError, IndexError) as e:
            say(event="error", command=command, error=str(e))


def main():
    parser = argparse.ArgumentParser()
    # Several, as nova takes them (a later file wins).
    parser.add_argument("--config-file", required=True, action="append")
    parser.add_argument("--request-log", required=True)
    parser.add_argument("--fake-token")
    args = parser.parse_args()
    files = [arg for path in args.config_file for arg in ("--config-file", path)]
    config.parse_args([sys.argv[0], *files])
    objects.register_all()
    # nova-compute's own logging (nova/cmd/compute.py), plus keystoneauth's
    # request lines, as when debugging the Ironic client: they carry the
    # token hashed ({SHA256}...). Before the request log's level below,
    # which oslo.log's default levels would otherwise lower.
    oslo_logging.setup(nova.conf.CONF, "nova")
    logging.getLogger("keystoneauth").setLevel(logging.DEBUG)
    logging.getLogger("urllib3.connectionpool").setLevel(logging.DEBUG)
    logging.getLogger("urllib3.connectionpool").addHandler(RequestLog(args.request_log))
    serve(Harness(fake_token=args.fake_token))


if __name__ == "__main__":
    main()
