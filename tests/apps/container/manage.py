"""Stands in for a Django project's manage.py in the container tests.

  collectstatic --noinput   copies /app/static/* into $STATIC_ROOT
  migrate                   nothing to migrate
"""

import os
import shutil
import sys


def main(args):
    if args[:1] == ["collectstatic"]:
        root = os.environ.get("STATIC_ROOT", "/app/staticfiles")
        os.makedirs(root, exist_ok=True)
        names = sorted(os.listdir("/app/static"))
        for name in names:
            shutil.copy(os.path.join("/app/static", name), os.path.join(root, name))
        print("%d static files copied to '%s'." % (len(names), root))
        return 0
    if args[:1] == ["migrate"]:
        print("No migrations to apply.")
        return 0
    print("manage.py (test stand-in): unknown command %r" % (args,), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
