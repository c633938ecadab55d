#!/usr/bin/env python3
"""A real Git LFS HTTP server on 127.0.0.1 for the tests: giftless (PyPI, pinned in scripts/setup.sh) with local
storage and anonymous read/write. Prints the port it listens on, then serves until killed.
Usage: lfs-test-server.py STORAGE_DIR
Clients use http://127.0.0.1:PORT/<org>/<repo>.git/info/lfs as their lfs.url."""
import logging, os, signal, sys, warnings

warnings.simplefilter("ignore")
# A parent that blocks SIGTERM (a test runner's threads) passes the mask on: unblock it so that terminating works.
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
storage = os.path.abspath(sys.argv[1])
os.makedirs(storage, exist_ok=True)
config = os.path.join(storage, "giftless.yaml")
with open(config, "w") as f:
    f.write(f"""AUTH_PROVIDERS:
  - giftless.auth.allow_anon:read_write
TRANSFER_ADAPTERS:
  basic:
    factory: giftless.transfer.basic_streaming:factory
    options:
      storage_class: giftless.storage.local_storage:LocalStorage
      storage_options:
        path: {storage}/objects
LEGACY_ENDPOINTS: false
""")
os.environ["GIFTLESS_CONFIG_FILE"] = config
from giftless.app import init_app  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = make_server("127.0.0.1", 0, init_app(), threaded=True)
print(server.server_port, flush=True)
server.serve_forever()
