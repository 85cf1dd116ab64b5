"""The names dlenv gives things: label keys, image names and tags, paths inside images.

One home for each: every module that writes or reads a label, formats `dlenv/<stack>` or
spells an in-image path takes it from here, so a rename is one edit. Pure constants and
tiny formatters; imports nothing from dlenv.
"""

from __future__ import annotations

# --- labels on images and containers -------------------------------------------------------
LABEL_PREFIX = "org.dlenv"
DLENV_LABELS = f"{LABEL_PREFIX}."                          # every dlenv label starts so
HASH_LABEL = f"{LABEL_PREFIX}.content-hash"                # the content hash promotion trusts
STACK_LABEL = f"{LABEL_PREFIX}.stack"
LOCK_LABEL = f"{LABEL_PREFIX}.lock"                        # the lock's digest, or "unlocked"
REFRESHED_LABEL = f"{LABEL_PREFIX}.lock-refreshed"         # built from a refreshed lock: "<from digest> <pins that moved>"
VERSION_LABEL = f"{LABEL_PREFIX}.dlenv-version"
BASE_LABEL = f"{LABEL_PREFIX}.base"
COMPONENTS_LABEL = f"{LABEL_PREFIX}.components"
COMPONENT_LABEL = f"{LABEL_PREFIX}.component."             # + component name -> version
SOURCE_LABEL = f"{LABEL_PREFIX}.source."                   # + component -> "<pkg>=<ver> <file> sha256:<hex>"
CUDA_LABEL = f"{COMPONENT_LABEL}cuda"
RECIPE_LABEL = f"{LABEL_PREFIX}.base-recipe"               # suite/variant/SOURCE_DATE_EPOCH of a bootstrapped base
ROOTFS_LABEL = f"{LABEL_PREFIX}.base-rootfs-sha256"
PACKAGES_LABEL = f"{LABEL_PREFIX}.base-packages-sha256"
PARENT_LABEL = f"{LABEL_PREFIX}.parent"                    # a layered stack: the parent image it was built on
ROLE_LABEL = f"{LABEL_PREFIX}.role"                        # on containers dlenv starts: lock, verify, shell, ...
K8S_LABEL_PREFIX = f"{LABEL_PREFIX}/"                      # Kubernetes label keys use a slash
SLURM_CLUSTER_LABEL = f"{LABEL_PREFIX}.slurm-cluster"      # on a Slurm cluster's containers and network: its id
SLURM_NODE_LABEL = f"{LABEL_PREFIX}.slurm-node"            # on a Slurm node image: the hash of what made it
SLURM_VERSION_LABEL = f"{LABEL_PREFIX}.slurm-version"      # on a Slurm node image: Debian's slurmd version

# --- environment variables the build controls ------------------------------------------------
# A stack's `env:` may not set these: dlenv's own (DLENV_*), the ones Docker passes to every build
# (proxies, either case) and the reproducible-build clock. The ARGs of the Dockerfile template are
# refused as well, read from the rendered Dockerfile itself (plan/render.py), so a new ARG is
# covered without a second list.
DLENV_ENV_PREFIX = "DLENV_"
BUILD_CONTROLLED_ENV = ("SOURCE_DATE_EPOCH", "HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY")
PATH_REFERENCES = ("${PATH}", "$PATH")      # how `env: {PATH: ...}` names the image's own PATH


def is_build_controlled(name: str) -> bool:
    return name.upper().startswith(DLENV_ENV_PREFIX) or name.upper() in BUILD_CONTROLLED_ENV


# --- images ----------------------------------------------------------------------------------
REPO_PREFIX = "dlenv/"
BASE_REPO = f"{REPO_PREFIX}base"
CHECK_REPO_PREFIX = "dlenv-check/"   # buildah: the second build of `build --check`, removed after it
LOCKENV_REPO = f"{REPO_PREFIX}lockenv"
TAG_CHARS = 16                                              # hash characters in a tag
SLURM_REPO_SUFFIX = "-slurm"                                # dlenv/<stack>-slurm: the stack's Slurm node image


def image_repo(stack: str) -> str:
    """`dlenv/<stack>`: the repository of a stack's images."""
    return f"{REPO_PREFIX}{stack}"


def hash_tag(stack: str, content_hash: str) -> str:
    return f"{image_repo(stack)}:{content_hash[:TAG_CHARS]}"


def candidate_tag(stack: str, content_hash: str) -> str:
    return f"{hash_tag(stack, content_hash)}-candidate"


def latest_tag(stack: str) -> str:
    return f"{image_repo(stack)}:latest"


def slurm_node_tag(stack: str, content_hash: str) -> str:
    """`dlenv/<stack>-slurm:<hash16>`: the Slurm node image on a stack's promoted image, named by the
    stack's content hash."""
    return f"{image_repo(stack)}{SLURM_REPO_SUFFIX}:{content_hash[:TAG_CHARS]}"


# --- containers ---------------------------------------------------------------------------------
# NGC-style limits for NCCL/MPI: pinned memory unlimited, a larger stack. Every container dlenv
# starts gets them, and so does an exported devcontainer.
ULIMITS = (("memlock", -1, -1), ("stack", 67108864, 67108864))

# --- paths inside images -----------------------------------------------------------------------
VENV = "/opt/venv"
VENV_PYTHON = f"{VENV}/bin/python"
LEAF = "/opt/leaf"                  # the stack's own python_packages (a prefix on PYTHONPATH)
NVIDIA_PREFIXES = "/opt/nvidia"     # `pip --target` prefixes of the CUDA components
RUNTIME_USER = "dlenv"
RUNTIME_UID = 1000
RUNTIME_HOME = f"/home/{RUNTIME_USER}"
WORKDIR = "/workspace"
BUILD_DIR = "/etc/dlenv-build"      # build stage only: CA bundle, pins
CA_BUNDLE_TARGET = f"{BUILD_DIR}/ca.crt"
SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"
PYLOCK_DIR = f"{BUILD_DIR}/pylock"
APT_BUILD_FILE = f"{BUILD_DIR}/apt-build.txt"
APT_RUNTIME_FILE = "/etc/dlenv/apt-runtime.txt"
CHECKS_DIR = "/tmp/dlenv-checks"  # where verify copies check scripts into a container
# Where a stack's `files:` may not land: the system, the package database, what dlenv installs.
# (Copied files are chowned to the runtime user: over these they would hand the system to it.)
SYSTEM_PATHS = ("/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/root",
                "/run", "/sbin", "/sys", "/usr", "/var/lib/dpkg", "/var/lib/apt", "/var/cache/apt",
                VENV, LEAF, NVIDIA_PREFIXES, "/opt/openmpi", "/opt/ucx", "/opt/cuda-headers")


def is_system_path(dest: str) -> bool:
    """`dest` is one of SYSTEM_PATHS or lies under one."""
    dest = "/" + dest.strip("/")
    return any(dest == p or dest.startswith(p.rstrip("/") + "/") for p in SYSTEM_PATHS if p != "/") or dest == "/"

# --- Slurm clusters of node images (dlenv slurm, verify --slurm) -------------------------------
SLURM_ROLES = ("slurm-controller", "slurm-node")    # ROLE_LABEL values of a cluster's containers
SLURM_NETWORK_ROLE = "slurm"                        # ROLE_LABEL of a cluster's network
SLURM_CONTROLLER_HOST = "ctl"                       # host names inside a cluster: ctl, node1..nodeN
SLURM_NODE_HOST = "node"
SLURM_START = "/usr/local/sbin/dlenv-slurm-start"   # the node image's entrypoint: munged, then one daemon
SLURM_CONF = "/etc/slurm/slurm.conf"                # mounted read-only at run time, never in the image
SLURM_SECRETS = "/run/dlenv-slurm"                  # the run's munge key, mounted read-only at run time
MUNGE_DIR = "/etc/munge"                            # a tmpfs in a cluster's containers: the key's copy
SLURM_APT_SOURCES = "dlenv-debian.sources"         # node image context: the host's Debian sources, for its apt step
SLURM_SPOOL = "/var/lib/slurm/slurmd"               # slurmd's spool (PMIx server files live below it)

# --- build context folders (relative to the context) -------------------------------------------
BUILD_FILES = "dlenv-build"         # copied into the build stage only
RUNTIME_FILES = "dlenv-runtime"     # copied into the runtime stage
COPIED_FILES = "dlenv-files"        # the stack's own files (`files:`), copied last into the runtime stage
CA_BUNDLE_PATH = f"{BUILD_FILES}/ca.crt"   # written by the engine; never hashed, never in the runtime stage
CA_SECRET_ID = "dlenv-ca"                  # BuildKit: the CA bundle as a secret instead of a context file
# buildah: the Debian sources (machine-dependent: the mirror) reach RUN steps as a bind mount, never a layer
APT_SOURCES_CONTEXT = "apt-sources/debian.sources"          # outside dlenv-build: no stage copies it
APT_SOURCES_DIR = "/etc/apt/sources.list.d"
APT_SOURCES_LIST = "/etc/apt/sources.list"
APT_SOURCES_MOUNT = f"{APT_SOURCES_DIR}/dlenv-build.sources"
# dlenv's package repository: every Debian byte a build installs comes from it, served on the host for
# the build's duration and reached through the build's (predefined) http_proxy, whose value no history
# records. The host name never resolves: only that proxy answers for it, so no image text depends on the machine.
PACKAGE_REPO_HOST = "dlenv.packages"
PACKAGE_REPO_URL = f"http://{PACKAGE_REPO_HOST}/"
PACKAGE_REPO_SOURCES = f"{APT_SOURCES_DIR}/0000dlenv.sources"     # in the base rootfs (mmdebstrap names it so)
DEB_FILES = "pool"                   # the repository's folder of .deb files (its Packages index names them)
SOURCE_TARBALLS = "sources"          # the repository's folder of Debian source tarballs
PYTHON_FILES = "python"              # the repository's folder of Python files (pip's index is simple/)
BUILDAH_LOCAL = "localhost/"        # how buildah names an image it holds under a short name
# The proxy variables. Builders take them as predefined build arguments and record no value, but buildah
# 1.28 writes the NAMES of those it is given into the history of every ARG step (`ARG DLENV_CONTENT_HASH
# HTTP_PROXY http_proxy`), so into the image id: a buildah build is given dlenv's own arguments only,
# never the host's proxies (issue #24). buildah also hands the proxies of its own environment (these
# and the FTP/ALL ones) to every RUN step: dlenv runs it without them (every file comes from dlenv's
# repository, and a host no_proxy could keep apt and pip from reaching it).
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
BUILDAH_HOST_PROXY_ENV = PROXY_VARS + ("FTP_PROXY", "ftp_proxy", "ALL_PROXY", "all_proxy")
BUILDAH_BASE_FORMAT_LABEL = f"{LABEL_PREFIX}.buildah-base-format"   # what the buildah base's bootstrap removed
# buildah: first step of a stage that would otherwise begin as another one does (plan/buildah_variant.py)
BUILDAH_STAGE_LABEL = f"{LABEL_PREFIX}.buildah-stage"

# --- images for HPC container runtimes (dlenv export charliecloud, verify --runtime) ------------
# In a Charliecloud image (directory or SquashFS): what it was made from (stack, content hash, lock, image id).
# ch-convert itself writes ch/environment (the image's ENV, read by `ch-run --set-env`) beside it.
CHARLIECLOUD_RECORD = "ch/dlenv.json"
