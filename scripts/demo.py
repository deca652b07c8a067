"""The cutover demo: see scripts/demo.sh. Starts two throwaway replica sets with keyFile
auth, seeds them, runs an application that writes throughout, and runs the example plan."""
import os, shutil, signal, socket, subprocess, sys, tempfile, threading, time

from pymongo import MongoClient
from pymongo.errors import PyMongoError

MONGOD = os.environ["MONGOD"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUTOVER = os.path.join(ROOT, "target", "release", "cutover")
PLAN = os.path.join(ROOT, "examples", "reversible.toml")
PW = "demo-root-pw"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ReplicaSet:
    def __init__(self, name, workdir):
        self.name, self.port = name, free_port()
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir)
        key = os.path.join(workdir, "keyfile")
        if not os.path.exists(key):
            with open(key, "w") as f:
                f.write("cutoverDemoKeyFile0123456789abcdef")
            os.chmod(key, 0o400)
        self.proc = subprocess.Popen(
            [MONGOD, "--replSet", name, "--port", str(self.port), "--bind_ip", "127.0.0.1",
             "--dbpath", self.dir, "--keyFile", key, "--wiredTigerCacheSizeGB", "0.25",
             "--oplogSize", "256", "--unixSocketPrefix", self.dir,
             "--logpath", os.path.join(self.dir, "mongod.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                break
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    sys.exit(f"demo: mongod {name} did not start; see {self.dir}/mongod.log")
                time.sleep(0.1)
        c = MongoClient(f"mongodb://127.0.0.1:{self.port}/?directConnection=true")
        c.admin.command("replSetInitiate", {"_id": name, "members": [{"_id": 0, "host": f"127.0.0.1:{self.port}"}]})
        while not c.admin.command("hello").get("isWritablePrimary"):
            time.sleep(0.1)
        c.admin.command("createUser", "root", pwd=PW, roles=["root"])
        self.root = MongoClient(self.uri("root", PW))
        self.root.admin.command("createUser", "app", pwd="app-pw", roles=["readWriteAnyDatabase"])
        self.app = MongoClient(self.uri("app", "app-pw"))

    def uri(self, user, pw):
        return f"mongodb://{user}:{pw}@127.0.0.1:{self.port}/?replicaSet={self.name}"

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def app_writer(src, dst, stop, stats):
    """The application: writes to whichever cluster accepts its writes, as `app` (no bypass).
    Once refused by `new` after writing there (the final commit has begun), it stops, so the
    two clusters can be compared at the end."""
    target, names, n = 0, ("old", "new"), 0
    clients = (src.app, dst.app)
    while not stop.is_set():
        try:
            clients[target].shop.orders.insert_one({"_id": f"live-{n}", "qty": n % 5, "via": names[target]})
            clients[target].shop.orders.update_one({"_id": n % 1000}, {"$inc": {"qty": 1}})
            stats[names[target]] += 1
            n += 1
            time.sleep(0.01)
        except PyMongoError as e:
            if "User writes blocked" in str(e) or getattr(e, "code", None) == 371:
                stats["refused"] += 1
                if target == 1 and stats["new"] > 0:
                    return
                target = 1 - target
                time.sleep(0.05)
            else:
                time.sleep(0.1)


def run(args, env):
    print(f"\n$ cutover {' '.join(args)}", flush=True)
    return subprocess.run([CUTOVER] + args, env=env).returncode


def main():
    work = tempfile.mkdtemp(prefix="cutover-demo-")
    rs = []
    try:
        print("demo: starting two local replica sets (the 'old' and the 'new' cluster) ...", flush=True)
        old, new = ReplicaSet("old", work), ReplicaSet("new", work)
        rs = [old, new]
        print(f"demo: old = 127.0.0.1:{old.port}, new = 127.0.0.1:{new.port}")
        shop = old.root.shop
        shop.orders.insert_many([{"_id": i, "item": f"sku-{i % 97}", "qty": i % 7, "tags": ["demo"]} for i in range(20000)])
        shop.users.insert_many([{"_id": i, "email": f"user{i}@example.com"} for i in range(2000)])
        shop.users.create_index("email", unique=True)
        shop.orders.create_index([("item", 1), ("qty", -1)])
        print("demo: seeded shop.orders (20,000 docs) and shop.users (2,000 docs, unique email index)")
        env = dict(os.environ, SOURCE_URI=old.uri("root", PW), DESTINATION_URI=new.uri("root", PW))
        rc = run(["check", PLAN], env)
        if rc != 0:
            sys.exit(f"demo: cutover check exited {rc}")
        stop, stats = threading.Event(), {"old": 0, "new": 0, "refused": 0}
        t = threading.Thread(target=app_writer, args=(old, new, stop, stats), daemon=True)
        t.start()
        print("demo: an application now writes ~100 orders/s as user `app`, following whichever cluster accepts writes")
        # Up to and including `reverse`: the application moves to the new cluster at the
        # first commit, and the old one receives its writes once reverse starts.
        rc = run(["run", PLAN, "--max-steps", "4"], env)
        if rc == 0:
            print("\ndemo: the application writes to the new cluster for 3 s while cutover is stopped "
                  "(the reverse sync resumes from its checkpoint) ...", flush=True)
            time.sleep(3)
            run(["status", PLAN], env)
            rc = run(["run", PLAN], env)
        stop.set()
        t.join()
        run(["status", PLAN], env)
        print(f"\ndemo: application writes acknowledged: {stats['old']} on old, {stats['new']} on new; "
              f"{stats['refused']} refused while blocked (retried elsewhere)")
        counts = [c.root.shop.orders.count_documents({}) for c in rs]
        print(f"demo: shop.orders documents: old {counts[0]}, new {counts[1]}")
        if rc != 0:
            sys.exit(f"demo: cutover run exited {rc}")
    finally:
        for r in rs:
            r.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
