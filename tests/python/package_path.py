"""Where a test imports gstab from: the source tree's python/ folder, or that of the client
bundle given as --bundle DIR (scripts/client-bundle's folder, as a training image uses it; its
package finds the bundled libgstab.so). Imported before gstab:

    import package_path
    BUNDLE = package_path.first_on_sys_path()
    import gstab
"""
import argparse
import os
import sys


def first_on_sys_path():
    """Puts the package's folder first on sys.path; returns --bundle's DIR, or None."""
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--bundle")
    bundle = where.parse_known_args()[0].bundle
    sys.path.insert(0, os.path.join(bundle, "python") if bundle else
                    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
    return bundle
