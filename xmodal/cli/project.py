"""``xmodal project create|grow|resync|list``: set up a project and its Label Studio side."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

from xmodal import settings
from xmodal.encoders import DEFAULT_TEXT_ENCODER, TEXT_ENCODER_HELP
from xmodal.errors import ConfigError

CREATE_EXAMPLES = """\
examples:
  # workspace + tasks.json only (no Label Studio yet)
  xmodal project create --data /data/coco_mini --name coco --k 20

  # the whole loop: Label Studio project, tasks, ML backend, initial predictions
  export LABEL_STUDIO_URL=http://127.0.0.1:8080 LABEL_STUDIO_API_KEY=<token>
  xmodal serve --port 9090 &  xmodal worker &
  xmodal project create --data /data/coco_mini --name coco --k 20 \\
      --backend-url http://127.0.0.1:9090

  # SSM-AL_T: cluster the texts, annotators pick images; k chosen by the canopy method
  xmodal project create --data my_data/ --name shop --select text --k auto

  # the paper's faithful index (the default adds z-scored SSR columns, CSLS and the class bridge)
  xmodal project create --data /data/coco_mini --name coco --k 20 --enhance none

  # the tasks of Label Studio project 12 (images uploaded, or in local or cloud storage)
  xmodal project create --from-label-studio 12 --name shop --backend-url http://127.0.0.1:9090
  xmodal project create --from-label-studio 12 --name shop --image-field photo --text-field caption

Data: a COCO-mini folder (pairs.json) or the generic format: images/ (nested folders allowed)
and texts.jsonl, one {"id": ..., "text": ..., "image": <optional id of its image>} per line.
Rerunning the same command adds nothing twice: features come from the workspace, medoids are kept
(a larger --k adds medoids), tasks are matched by data.item_id, the backend by URL.
The backend (`xmodal serve`) and the worker (`xmodal worker`) must use the same MODEL_DIR and
REDIS_URL as this command. Label Studio needs LABEL_STUDIO_ML_BLOCK_LOCAL_IP=false and
LABEL_STUDIO_SSRF_PROTECTION_ENABLED=false to reach a backend on localhost, and
LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true for --images local (else images are sent inline).
"""

GROW_EXAMPLES = """\
examples:
  xmodal project grow --name coco --k 40

New medoids are chosen greedily to cover what the current ones miss (the existing medoids and
their annotations stay); in Label Studio they become new tasks whose options are ranked by the
current index, with predictions of the current model version.
"""

RESYNC_EXAMPLES = """\
examples:
  xmodal project resync --name coco            # in this process; prints added/removed annotations
  xmodal project resync --name coco --enqueue  # as an RQ job (see xmodal status)

Label Studio's URL and API key come from what the backend learnt on /setup, the workspace or
$LABEL_STUDIO_URL / $LABEL_STUDIO_API_KEY.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("project", help="create and grow projects (workspace + Label Studio)",
                              description="Projects: a workspace under $MODEL_DIR and, optionally, "
                              "its Label Studio project.")
    sub = p.add_subparsers(dest="project_command", metavar="ACTION")

    c = sub.add_parser("create", help="embed, pick medoids, create the Label Studio project",
                       description="Embed both modalities, cluster the selected one with k-medoids\n"
                       "and write the workspace; with a Label Studio URL also create the labelling\n"
                       "project, import the medoids as tasks, connect the ML backend and push the\n"
                       "first predictions.", epilog=CREATE_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="PATH", help="data folder (generic format or COCO-mini)")
    src.add_argument("--from-label-studio", type=int, metavar="ID",
                     help="the items are the tasks of this Label Studio project (on --label-studio-url): "
                     "images fetched through Label Studio, texts from the task data")
    c.add_argument("--image-field", metavar="NAME",
                   help="--from-label-studio: the task data field with the image URL (default: the "
                   "source config's one <Image> tag)")
    c.add_argument("--text-field", action="append", metavar="NAME",
                   help="--from-label-studio: a task data field with a text; repeat for several "
                   "(default: the source config's one <Text> tag)")
    c.add_argument("--name", required=True, help="project name (letters, digits, '.', '_', '-')")
    c.add_argument("--select", choices=("image", "text"), default="image",
                   help="modality to cluster and ask about: image = SSM-AL_I (default), text = SSM-AL_T")
    c.add_argument("--k", default="auto", metavar="N|auto",
                   help="number of medoids = labels to collect; 'auto' = canopy method (default)")
    c.add_argument("--image-encoder", default="efficientnet-lite0", metavar="NAME",
                   help="efficientnet-lite0 (default) or torchvision:<arch>")
    c.add_argument("--text-encoder", default=DEFAULT_TEXT_ENCODER, metavar="NAME", help=TEXT_ENCODER_HELP)
    c.add_argument("--measure", choices=("pearson", "cosine"), default="pearson")
    c.add_argument("--enhance", metavar="NAMES",
                   help="enhancements beyond the paper, comma-separated: zscore-medoids (k-medoids "
                   "of the z-scored features, for medoids chosen from then on), zscore (z-scored "
                   "SSR columns), csls (hubness correction), bridge (the image encoder's classes in "
                   "the text encoder's space, weighted by what the labels support), map (opt-in: a linear "
                   "map self-trained on the uncoupled items, seconds more per rebuild); 'none' = "
                   "faithful SSM-AL. Default: the workspace's setting, the first four for a new one "
                   "(measured best, docs/results.md)")
    c.add_argument("--captions", choices=("first", "all"), default="first",
                   help="COCO-mini: the first caption of each image (default) or all five")
    c.add_argument("--candidates", type=int, default=10, metavar="N",
                   help="image tasks: the diverse texts (k-medoids) listed first until the index can "
                        "rank (default 10)")
    c.add_argument("--page-texts", type=int, default=None, metavar="N",
                   help="image tasks: texts each page carries for its filter, best first (default "
                        "1000); the search box under 'None of these' reaches every text")
    c.add_argument("--show-ids", choices=("auto", "yes", "no"), default=None,
                   help="image tasks: show each text's id on the page (default auto: not where a text id "
                        "names an image by its file name, stem or number, as Flickr8k's "
                        "1000268201_693b08cb0e.jpg#0 or COCO's 535506#0, which a person could match "
                        "instead of looking at the photo)")
    c.add_argument("--label-studio-url", default=settings.get("LABEL_STUDIO_URL"), metavar="URL",
                   help="Label Studio base URL (default $LABEL_STUDIO_URL)")
    c.add_argument("--api-key", default=settings.get("LABEL_STUDIO_API_KEY"), metavar="KEY",
                   help="Label Studio access token (default $LABEL_STUDIO_API_KEY)")
    c.add_argument("--backend-url", default=settings.get("XMODAL_BACKEND_URL"), metavar="URL",
                   help="where Label Studio reaches the ML backend, e.g. http://127.0.0.1:9090 "
                   "(default $XMODAL_BACKEND_URL)")
    c.add_argument("--title", help="Label Studio project title (default: --name)")
    c.add_argument("--images", default=None, metavar="auto|local|inline|source|URL",
                   help="how Label Studio gets the images: local-files storage, inline thumbnails, "
                   "a URL prefix the image id is appended to, or (--from-label-studio) the URL of the "
                   "source task (default: source with --from-label-studio, else auto: local, else inline)")
    c.add_argument("--document-root", metavar="DIR",
                   help="Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (default: that "
                   "variable here, else /)")
    c.add_argument("--label-config", metavar="FILE", help="labelling config instead of label_config/*.xml")
    c.add_argument("--model-dir", metavar="DIR", help="workspaces root (default $MODEL_DIR or ./models)")
    c.add_argument("--cache-dir", metavar="DIR", help="feature cache root (default ~/.cache/xmodal/features)")
    c.add_argument("--workers-embed", action="store_true",
                   help="compute the image (and MiniLM) features on `xmodal worker`s, as chunked "
                   "jobs on $XMODAL_EMBED_QUEUE (default xmodal-embed), instead of in this process")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--json", action="store_true", help="print the result as JSON")
    c.set_defaults(func=run_create)

    g = sub.add_parser("grow", help="add medoids (tasks) without discarding pairs",
                       description="Raise the number of medoids to --k.", epilog=GROW_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("--name", required=True)
    g.add_argument("--k", required=True, metavar="N", help="new total number of medoids")
    g.add_argument("--label-studio-url", default=settings.get("LABEL_STUDIO_URL"), metavar="URL")
    g.add_argument("--api-key", default=settings.get("LABEL_STUDIO_API_KEY"), metavar="KEY")
    g.add_argument("--model-dir", metavar="DIR")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=run_grow)

    rs = sub.add_parser("resync", help="replay Label Studio's annotations into the pair store",
                        description="Label Studio is the source of truth: list every task with its "
                        "annotations, store what the pair store misses (lost webhooks, Redis lost its "
                        "data), remove what Label Studio deleted, then enqueue a rebuild. Prints what "
                        "was added and removed.", epilog=RESYNC_EXAMPLES,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    rs.add_argument("--name", required=True)
    rs.add_argument("--model-dir", metavar="DIR")
    rs.add_argument("--enqueue", action="store_true",
                    help="run it as a job on the workers instead of in this process")
    rs.add_argument("--no-rebuild", action="store_true", help="do not enqueue a rebuild afterwards")
    rs.add_argument("--json", action="store_true")
    rs.set_defaults(func=run_resync)

    ls = sub.add_parser("list", help="list the projects under $MODEL_DIR")
    ls.add_argument("--model-dir", metavar="DIR")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=run_list)

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _say(args):
    if getattr(args, "json", False):
        return lambda _msg: None
    return lambda msg: print(msg, flush=True)


def _model_dir(args):
    import logging

    if not getattr(args, "debug", False):
        # the command prints its own steps; the library's timestamped INFO lines are for services
        logging.getLogger("xmodal").setLevel(logging.WARNING)
    if args.model_dir:
        os.environ["MODEL_DIR"] = str(Path(args.model_dir).resolve())  # for the index store too
    return None


def _print_result(args, result, extra: dict | None = None) -> None:
    if args.json:
        print(json.dumps({**result.summary(), **(extra or {})}, indent=1, default=str))
        return
    for note in result.notes:
        print(f"note: {note}")
    t = result.timings.get("total_s")
    print(f"project {result.ws.name!r} ready in {t:.1f} s: {result.k} medoids, workspace {result.ws.root}")
    if result.ls_project_id is not None:
        print(f"label at {result.ls_url}/projects/{result.ls_project_id}/data "
              f"(model_version {result.model_version})")


def run_create(args) -> int:
    from xmodal.encoders import check_encoder_name
    from xmodal.labelstudio.project import ProjectSpec, create_project

    check_encoder_name("image", args.image_encoder)  # before anything is embedded
    check_encoder_name("text", args.text_encoder)
    _model_dir(args)
    spec = ProjectSpec(name=args.name, data=args.data or "", select=args.select, k=args.k,
                       image_encoder=args.image_encoder, text_encoder=args.text_encoder,
                       measure=args.measure, enhance=args.enhance, captions=args.captions, candidates=args.candidates,
                       page_texts=args.page_texts,
                       show_ids=args.show_ids,
                       label_studio_url=args.label_studio_url or None, api_key=args.api_key or None,
                       backend_url=args.backend_url or None, title=args.title, images=args.images,
                       document_root=args.document_root, label_config=args.label_config,
                       feature_cache=args.cache_dir, workers_embed=args.workers_embed,
                       seed=args.seed)
    if args.from_label_studio is None:
        if args.image_field or args.text_field:
            raise ConfigError("--image-field and --text-field name the fields of --from-label-studio tasks")
        _print_result(args, create_project(replace(spec, images=args.images or "auto"), say=_say(args)))
        return 0
    from xmodal.labelstudio.source import create_from_label_studio

    texts = [f.strip() for arg in args.text_field or [] for f in arg.split(",") if f.strip()]
    result, items = create_from_label_studio(spec, args.from_label_studio, image_field=args.image_field,
                                             text_fields=texts or None, say=_say(args))
    _print_result(args, result, {"source": {
        "label_studio_project": items.project_id, "tasks": items.n_tasks, "images": len(items.images),
        "texts": len(items.texts), "fetched": items.fetched, "fetch_s": items.fetch_s,
        "left_out": items.refused, "webhook": items.webhook_id}})
    return 0


def run_grow(args) -> int:
    from xmodal.labelstudio.project import grow_project

    _model_dir(args)
    try:
        k = int(args.k)
    except ValueError:
        raise ConfigError(f"--k must be a number, not {args.k!r}") from None
    result = grow_project(args.name, k, label_studio_url=args.label_studio_url or None,
                          api_key=args.api_key or None, seed=args.seed, say=_say(args))
    _print_result(args, result)
    return 0


def run_resync(args) -> int:
    from workers.resync import resync
    from xmodal.jobs.queueing import enqueue_resync
    from xmodal.redis_conn import get_redis

    _model_dir(args)
    if args.enqueue:
        job_id = enqueue_resync(get_redis(), args.name, "cli")
        print(json.dumps({"job_id": job_id}) if args.json else f"resync of {args.name!r} queued: job {job_id}")
        return 0
    report = resync(args.name, redis_client=get_redis(), rebuild=not args.no_rebuild)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"resync {args.name!r}: {report['tasks']} tasks, {report['annotations']} annotations in Label "
          f"Studio in {report['seconds']} s")
    print(f"  added or changed: {report['stored']}" + (f" ({_ids(report['added'])})" if report["added"] else ""))
    print(f"  removed (deleted in Label Studio): {report['deleted']}"
          + (f" ({_ids(report['removed'])})" if report["removed"] else ""))
    print(f"  unchanged: {report['same']}, older than stored: {report['stale']}, "
          f"invalid: {report['invalid']}")
    if report.get("rebuild_job"):
        print(f"  rebuild: job {report['rebuild_job']}")
    return 0


def _ids(ids: list[int], n: int = 20) -> str:
    return "annotations " + ", ".join(map(str, ids[:n])) + (f", ... ({len(ids) - n} more)" if len(ids) > n else "")


def run_list(args) -> int:
    from xmodal.labelstudio.project import list_projects

    _model_dir(args)
    rows = list_projects()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        from xmodal.redis_conn import model_dir

        print(f"no projects under {model_dir()} (create one with `xmodal project create`)")
        return 0
    for row in rows:
        if "error" in row:
            print(f"{row['name']:<24} incomplete: {row['error']}")
            continue
        ls = (f"Label Studio project {row['label_studio_project']} at {row['label_studio_url']}"
              if row.get("label_studio_project") is not None else "not linked to Label Studio")
        idx = f", index v{row['index_version']} ({row.get('pairs', 0)} pairs)" \
            if row.get("index_version") is not None else ""
        print(f"{row['name']:<24} select={row['select']} images={row['images']} texts={row['texts']} "
              f"medoids={row['medoids']}{idx}; {ls}")
    return 0
