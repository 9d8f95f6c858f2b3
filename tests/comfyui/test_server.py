"""The pack inside a real ComfyUI server: every example workflow, bad inputs, and Cancel during a fit.

Everything is queued through ``../shared/tools/run_workflow.py``, as a user's browser would queue it, on
one ``main.py --cpu`` server over random-weight stand-ins in the real file formats (``probes/make_standins.py``).
The SDXL workflows run on the SD1.5-shaped stand-in (a ``--set`` of the checkpoint, CLIP-vision and
IP-Adapter names): an SDXL UNet is 2.6 G parameters, and detection fixes its size; the wiring, the nodes
and the StyleStudio patch path are the same. Pictures are 64-96 px and samplers take 2 steps. The Flux and
SD3.5 workflows run as twins (``TWINS``): their text encoders give way to a test-only node, the rest runs as saved.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[2]
RUN_WORKFLOW = REPO.parent / "shared" / "tools" / "run_workflow.py"
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
SD15_STANDIN = ("1.ckpt_name=sd15_standin.safetensors", "2.clip_name=clip_vision_vitl_standin.safetensors")
#: Per workflow: the ``--set`` overrides that load the stand-ins and keep it small on a CPU.
RECIPES: dict[str, tuple[str, ...]] = {
    # The StyleMamba templates fit their styles in the graph: 2 steps at 64 px. The main one runs on the pack's 512 px
    # example photo as opened; the others on the tier's 96 px pictures (a 512 px picture costs the full-size stand-in
    # VAE about 10 s per encode and decode on a CPU, and tests nothing more).
    "text_style_transfer.json": ("2.vae_name=sd_vae_standin.safetensors", "3.iterations=2", "3.max_resolution=64"),
    "image_style_transfer.json": ("1.image=boat.jpg", "3.image=style.png", "2.vae_name=sd_vae_standin.safetensors",
                                  "4.iterations=2", "4.max_resolution=64"),
    "regional_styles.json": ("1.image=boat.jpg", "3.image=style.png", "4.image=boat_mask.png",
                             "2.vae_name=sd_vae_standin.safetensors", "5.iterations=2", "5.max_resolution=64",
                             "6.iterations=2", "6.max_resolution=64"),
    "train_and_apply_style.json": ("1.image=boat.jpg", "6.image=tubingen.jpeg", "2.vae_name=sd_vae_standin.safetensors",
                                   "3.iterations=2", "3.max_resolution=64"),
    # Twin (TWINS): the CLIP_VISION becomes the test-only StandInCLIPVisionLoader, ComfyUI's own ClipVisionModel at a
    # 2-layer size (64 crops per fit step through a full-size tower take most of an hour here; those towers are tested
    # in-process). The rest runs as opened: ComfyUI's example.png, the poster style made in the graph; 2 steps at 64 px.
    "clip_vision_image_style.json": ("2.vae_name=sd_vae_standin.safetensors", "5.iterations=2", "5.max_resolution=64"),
    # The tier's 9-frame 64x96 clip (3 Wan latent frames, the fewest a video fit takes) instead of the example's 17 frames
    # at 256 px, which a full-size Wan VAE takes minutes to encode and decode on a CPU; chunks of 1 make the temporal
    # state cross a chunk seam.
    "video_style_transfer.json": ("1.file=clip.mp4", "3.vae_name=wan_2.1_vae_standin.safetensors", "4.iterations=2",
                                  "4.max_resolution=64", "7.chunk_frames=1"),
    "stylestudio_sdxl.json": (*SD15_STANDIN, "4.ipadapter_file=csgo_sd15_standin.bin",
                              "7.width=64", "7.height=64", "8.steps=2"),
    "stylestudio_negative_style_controlnet.json": (
        *SD15_STANDIN, "4.ipadapter_file=ip-adapter_sd15_standin.safetensors", "7.width=64", "7.height=64", "8.steps=2",
        "13.control_net_name=controlnet_sd15_standin.safetensors", "17.width=64", "17.height=64", "18.steps=2"),
    # VCT on the SD1.5 stand-in: 64 px pictures, 2 concept steps, a 2-step chain with 1 null-text step per step.
    "vct_one_shot_translation.json": ("1.ckpt_name=sd15_standin.safetensors", "4.width=64", "4.height=64", "5.width=64",
                                      "5.height=64", "7.steps=2", "8.steps=2", "8.inner_steps=1"),
    # Twin (TWINS): Flux's DualCLIPLoader builds T5-XXL at 4.7 G parameters whatever the file, so its CLIPTextEncodes
    # become the test-only StandInFluxTextEncode (4096-d tokens + 768-d pooled). The rest is real: a Flux file with
    # 1 double + 1 single block (detection fixes the 3072 width), Redux and SigLIP so400m at their one size, a
    # 16-channel ae. 64 px (16 image tokens beside Redux's 729) and 2 steps.
    "stylestudio_flux_redux.json": (
        "1.unet_name=flux1_standin.safetensors", "3.vae_name=flux_ae_standin.safetensors",
        "4.style_model_name=flux1_redux_standin.safetensors", "5.clip_name=sigclip_vision_384_standin.safetensors",
        "11.width=64", "11.height=64", "12.steps=2"),
    # Twin as above; an XLabs-layout adapter for the stand-in's one double block, reading the CLIP ViT-L stand-in.
    "stylestudio_flux_ipadapter.json": (
        "1.unet_name=flux1_standin.safetensors", "3.vae_name=flux_ae_standin.safetensors",
        "4.clip_name=clip_vision_vitl_standin.safetensors", "9.ipadapter_file=flux-ip-adapter_standin.safetensors",
        "10.width=64", "10.height=64", "11.steps=2"),
    # Twin: TripleCLIPLoader builds CLIP-L, CLIP-G and T5-XXL at 5.5 G parameters whatever the files, so its
    # CLIPTextEncodes become the test-only StandInSD3TextEncode (4096-d tokens + 2048-d pooled). The rest is real: an
    # SD3.5-Large-shaped checkpoint 4 joint blocks deep (detection reads width and depth from the file: 256 wide) with
    # SD3's 16-channel VAE, InstantX's SD3.5 IP-Adapter .bin for that width and depth, SigLIP so400m at its one size.
    # 64 px (16 image tokens), 2 steps, true CFG and the teacher as saved.
    "stylestudio_sd35_ipadapter.json": (
        "1.ckpt_name=sd35_standin.safetensors", "4.clip_name=sigclip_vision_384_standin.safetensors",
        "9.ipadapter_file=sd35-ip-adapter_standin.bin", "10.width=64", "10.height=64", "11.steps=2"),
}
FILE_VALUE = re.compile(r"\.(safetensors|bin|ckpt|pt|pth|png|jpe?g)$", re.IGNORECASE)
#: ComfyUI's warnings when a file lacks weights its detected model has: a stand-in must never trigger them.
MISSING_WEIGHTS = re.compile(r"unet missing|clip missing|Missing VAE keys|missing clip vision|missing controlnet keys")
FIT_STEP = re.compile(r"TrainStyleMamba:\s*\d+%\|[^|]*\|\s*[1-9]\d*/\d+")  # tqdm: a step is done
QUEUE_TIMEOUT_S = 600


@dataclass(frozen=True)
class Queued:
    """One run_workflow.py line: ``ok``, and what it printed (outputs, or the error ComfyUI gave)."""

    ok: bool
    line: str
    seconds: float

    @property
    def outputs(self) -> dict[str, list[str]]:
        return ast.literal_eval(self.line.split("outputs ", 1)[1])

    @property
    def error(self) -> dict:
        """``node_type``, ``exception_type``, ``exception_message`` of an execution error."""
        assert "execution error: " in self.line, self.line
        return ast.literal_eval(self.line.split("execution error: ", 1)[1])


def run_workflow(url: str, workflow: Path, overrides: tuple[str, ...]) -> list[str]:
    """The run_workflow.py command line that queues ``workflow`` on the server at ``url`` with ``--set`` overrides."""
    sets = [arg for override in overrides for arg in ("--set", override)]
    return [sys.executable, str(RUN_WORKFLOW), "--server", url, "--timeout", str(QUEUE_TIMEOUT_S), str(workflow), *sets]


def queue(server, workflow: Path, overrides: tuple[str, ...] = ()) -> Queued:
    """Queue on ``server`` (the ``comfy_server`` fixture) and wait for the result."""
    start = time.perf_counter()
    done = subprocess.run(run_workflow(server.url, workflow, overrides), capture_output=True, text=True,
                          timeout=QUEUE_TIMEOUT_S + 60)
    seconds = time.perf_counter() - start
    line = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-2000:]
    return Queued(done.returncode == 0 and line.startswith("ok "), line, seconds)


@functools.cache
def output_node_types(url: str) -> frozenset[str]:
    with urllib.request.urlopen(url + "/object_info", timeout=60) as answer:
        info = json.loads(answer.read())
    return frozenset(name for name, spec in info.items() if spec.get("output_node"))


def needed_files(workflow: dict) -> list[str]:
    """What a workflow loads from disk, as ``node_id TYPE: value`` (for a workflow that has no recipe yet)."""
    return [f"{node['id']} {node['type']}: {value}" for node in workflow["nodes"]
            for value in (node.get("widgets_values") or []) if isinstance(value, str) and FILE_VALUE.search(value)]


def node(workflow: dict, node_id: int) -> dict:
    return next(n for n in workflow["nodes"] if n["id"] == node_id)


def add_node(workflow: dict, class_type: str, widgets: list, inputs: tuple[str, ...] = ()) -> int:
    node_id = max(n["id"] for n in workflow["nodes"]) + 1
    workflow["nodes"].append({"id": node_id, "type": class_type, "mode": 0, "widgets_values": widgets,
                              "inputs": [{"name": name, "link": None} for name in inputs]})
    return node_id


def connect(workflow: dict, source: int, slot: int, target: int, input_name: str) -> None:
    """Link ``source``'s output ``slot`` to ``target``'s input (replacing whatever fed it), as the UI stores links."""
    link_id = max(link[0] for link in workflow["links"]) + 1
    inputs = node(workflow, target)["inputs"]
    index = next(i for i, entry in enumerate(inputs) if entry["name"] == input_name)
    inputs[index]["link"] = link_id
    workflow["links"].append([link_id, source, slot, target, index, "*"])


def edited(tmp_path: Path, name: str, change: Callable[[dict], None]) -> Path:
    """A copy of ``workflows/<name>`` with ``change(workflow)`` applied, saved for run_workflow.py."""
    workflow = json.loads((REPO / "workflows" / name).read_text())
    change(workflow)
    path = tmp_path / name
    path.write_text(json.dumps(workflow))
    return path


FLUX_TEXT_STAND_IN, SD3_TEXT_STAND_IN = "StandInFluxTextEncode", "StandInSD3TextEncode"  # tests/comfyui/standin_nodes
CLIP_VISION_STAND_IN = "StandInCLIPVisionLoader"


def text_stand_in(loader: str, stand_in: str) -> Callable[[dict], None]:
    """A twin maker: the saved workflow with its text encoders (the ``loader`` node and its CLIPTextEncodes, same
    prompts) swapped for the test-only ``stand_in`` node; derived from the real JSON at test time, so the twin cannot
    drift from it."""

    def swap(workflow: dict) -> None:
        loaders = {n["id"] for n in workflow["nodes"] if n["type"] == loader}
        assert loaders, f"the twin expects a {loader} to replace; update text_stand_in's use in TWINS"
        for entry in workflow["nodes"]:
            if entry["type"] == "CLIPTextEncode":
                entry.update(type=stand_in, inputs=[])
        workflow["nodes"] = [n for n in workflow["nodes"] if n["id"] not in loaders]
        workflow["links"] = [link for link in workflow["links"] if link[1] not in loaders]

    return swap


def clip_vision_stand_in(workflow: dict) -> None:
    """The twin of a CLIP_VISION template: its CLIPVisionLoader becomes the test-only StandInCLIPVisionLoader."""
    loaders = [n for n in workflow["nodes"] if n["type"] == "CLIPVisionLoader"]
    assert loaders, "the twin expects a CLIPVisionLoader to replace; update clip_vision_stand_in's use in TWINS"
    for loader in loaders:
        loader["type"] = CLIP_VISION_STAND_IN


flux_text_stand_in = text_stand_in("DualCLIPLoader", FLUX_TEXT_STAND_IN)
sd3_text_stand_in = text_stand_in("TripleCLIPLoader", SD3_TEXT_STAND_IN)
#: Workflows that run as a twin: the saved graph with a part too large for CI swapped (see RECIPES' comments).
TWINS: dict[str, Callable[[dict], None]] = {"stylestudio_flux_redux.json": flux_text_stand_in,
                                            "stylestudio_flux_ipadapter.json": flux_text_stand_in,
                                            "stylestudio_sd35_ipadapter.json": sd3_text_stand_in,
                                            "clip_vision_image_style.json": clip_vision_stand_in}


def test_pack_imports_without_error(comfy_server) -> None:
    from comfyui_stylemamba import NODE_CLASS_MAPPINGS

    log = comfy_server.log_text()
    pack = str(comfy_server.base / "custom_nodes" / "comfyui-stylemamba")
    import_lines = [line for line in log.splitlines() if line.rstrip().endswith(pack)]
    assert import_lines and not any("IMPORT FAILED" in line for line in import_lines), log[-3000:]
    # ComfyUI names a pack that fails to import by its folder (our link); its own optional modules (audio without
    # torchaudio) fail too, under a path that also holds "comfyui-stylemamba" when the clone is named so
    assert not [line for line in log.splitlines() if "Cannot import" in line and pack in line]
    with urllib.request.urlopen(comfy_server.url + "/object_info", timeout=60) as answer:
        registered = set(json.loads(answer.read()))
    assert set(NODE_CLASS_MAPPINGS) <= registered, sorted(set(NODE_CLASS_MAPPINGS) - registered)
    for stand_in in (FLUX_TEXT_STAND_IN, SD3_TEXT_STAND_IN, CLIP_VISION_STAND_IN):  # test-only, not shipped
        assert stand_in in registered and stand_in not in NODE_CLASS_MAPPINGS


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[w.name for w in WORKFLOWS])
def test_workflow_runs_with_stand_ins(comfy_server, workflow: Path, tmp_path: Path, tier_report: list[str]) -> None:
    content = json.loads(workflow.read_text())
    if workflow.name not in RECIPES:
        pytest.fail(f"{workflow.name} has no stand-in recipe in tests/comfyui/test_server.py RECIPES; it loads "
                    f"{needed_files(content)}: add --set overrides naming stand-ins (and one to probes/make_standins.py "
                    f"for any new file kind) and small sizes", pytrace=False)
    queued = edited(tmp_path, workflow.name, TWINS[workflow.name]) if workflow.name in TWINS else workflow
    result = queue(comfy_server, queued, RECIPES[workflow.name])
    tier_report.append(f"workflow {workflow.name}: {result.seconds:.1f} s wall ({result.line})")
    print(f"{workflow.name}: {result.seconds:.1f} s")
    assert result.ok, result.line
    outputs = {str(n["id"]) for n in content["nodes"]
               if n["type"] in output_node_types(comfy_server.url) and n.get("mode", 0) not in (2, 4)}
    assert outputs <= set(result.outputs), f"output nodes {sorted(outputs)} gave {result.outputs}"
    assert not MISSING_WEIGHTS.findall(comfy_server.log_text())


#: text_style_transfer.json's Train StyleMamba, which the bad inputs swap for a Load StyleMamba (``load_fitted_model``).
TRAIN_NODE = 3
#: The overrides of that fitted variant: the stand-in VAE, and no fit to shrink.
FITTED_RECIPE = ("2.vae_name=sd_vae_standin.safetensors",)


def load_fitted_model(workflow: dict) -> None:
    """text_style_transfer.json as an artist reuses a fitted style: its Train StyleMamba becomes a Load StyleMamba of the
    stand-in ``van_gogh_00001`` under the same id, so each bad input costs one fuse, not a fit."""
    node(workflow, TRAIN_NODE).update(type="LoadStyleMamba", widgets_values=["van_gogh_00001.safetensors", "from checkpoint", 4],
                                      inputs=[])
    workflow["links"] = [link for link in workflow["links"] if link[3] != TRAIN_NODE]


def sd3_latent(workflow: dict) -> None:
    """VAEEncode -> a 16-channel latent, as an SD3/Flux.1 VAE gives."""
    node(workflow, 4).update(type="EmptySD3LatentImage", widgets_values=[64, 64, 1], inputs=[])


def nan_latent(workflow: dict) -> None:
    """The encoded latent times NaN (ComfyUI's range check lets NaN through) before StyleFuse."""
    multiply = add_node(workflow, "LatentMultiply", [float("nan")], inputs=("samples",))
    connect(workflow, 4, 0, multiply, "samples")
    connect(workflow, multiply, 0, 6, "latent")


def other_encoder(workflow: dict) -> None:
    """TextStyleEncode through another SigLIP (same width) than the one the StyleFuse model was trained with."""
    loader = add_node(workflow, "LoadStyleMamba", ["van_gogh_00001.safetensors", "other-siglip", 4])
    connect(workflow, loader, 0, 5, "style_mamba")


VCT = "vct_one_shot_translation.json"
VCT_CONCEPT, VCT_CONTENT, VCT_FUSION, VCT_REFERENCE, VCT_LATENT, VCT_CHECKPOINT = 7, 8, 9, 5, 6, 1


def vct_model(make: Callable[[dict, int], int]) -> Callable[[dict], None]:
    """VCT Fusion's MODEL made by ``make(workflow, checkpoint_node)`` (a node id) instead of the inversion's checkpoint."""

    def change(workflow: dict) -> None:
        connect(workflow, make(workflow, VCT_CHECKPOINT), 0, VCT_FUSION, "model")

    return change


def merged(workflow: dict, checkpoint: int) -> int:
    """ModelMergeSimple of the checkpoint with itself: other weights (patches), as a LoRA or a merge gives."""
    merge = add_node(workflow, "ModelMergeSimple", [0.5], inputs=("model1", "model2"))
    connect(workflow, checkpoint, 0, merge, "model1")
    connect(workflow, checkpoint, 0, merge, "model2")
    return merge


def zero_terminal_snr(workflow: dict, checkpoint: int) -> int:
    """ModelSamplingDiscrete eps with zsnr: the same weights on another noise schedule."""
    sampling = add_node(workflow, "ModelSamplingDiscrete", ["eps", True], inputs=("model",))
    connect(workflow, checkpoint, 0, sampling, "model")
    return sampling


def vct_nan_latent(workflow: dict) -> None:
    """The content latent times NaN before VCT Content Inversion."""
    multiply = add_node(workflow, "LatentMultiply", [float("nan")], inputs=("samples",))
    connect(workflow, VCT_LATENT, 0, multiply, "samples")
    connect(workflow, multiply, 0, VCT_CONTENT, "latent")


def vct_reference_batch(workflow: dict) -> None:
    """The reference repeated into a batch of 2 before VCT Concept Inversion."""
    repeat = add_node(workflow, "RepeatImageBatch", [2], inputs=("image",))
    connect(workflow, VCT_REFERENCE, 0, repeat, "image")
    connect(workflow, repeat, 0, VCT_CONCEPT, "reference")


def vct_flux_model(workflow: dict) -> None:
    """The Flux stand-in (a DiT) as VCT Content Inversion's MODEL."""
    loader = add_node(workflow, "UNETLoader", ["flux1_standin.safetensors", "default"])
    connect(workflow, loader, 0, VCT_CONTENT, "model")


@dataclass(frozen=True)
class BadInput:
    """A broken variant of a template (by default text_style_transfer.json with a fitted model loaded, see
    ``load_fitted_model``): the node that must refuse it and words its message must hold."""

    name: str
    node_type: str
    expected: tuple[str, ...]
    overrides: tuple[str, ...] = ()
    change: Callable[[dict], None] | None = None  # edits the workflow's graph
    workflow: str = "text_style_transfer.json"  # the one it breaks (a TWINS workflow runs as its twin)


BAD_INPUTS = [
    BadInput("strength NaN", "StyleFuse", ("strength", "nan"), ("6.strength=NaN",)),
    BadInput("NaN latent", "StyleFuse", ("latent", "nan"), change=nan_latent),
    BadInput("16-channel latent", "StyleFuse", ("4-channel", "16 channels"), change=sd3_latent),
    BadInput("empty style text", "TextStyleEncode", ("style text is empty",), ('5.text=""',)),
    BadInput("style from another encoder", "StyleFuse", ("other-siglip", "siglip-base-patch16-224"), change=other_encoder),
    BadInput("across frames on an image latent", "StyleFuse", ("temporal='across frames' needs a video LATENT", "4-D"),
             ('6.temporal="across frames"',)),
    BadInput("not a StyleMamba file", "LoadStyleMamba", ("not_stylemamba.safetensors", "not a StyleMamba checkpoint"),
             ("3.checkpoint=not_stylemamba.safetensors",)),
    BadInput("SD1.5 IP-Adapter on Flux", "StyleStudioCrossAdaINDiTIPAdapter", ("IP-Adapter for SD1.5 UNets", "XLabs flux-ip-adapter"),
             ("9.ipadapter_file=ip-adapter_sd15_standin.safetensors",), workflow="stylestudio_flux_ipadapter.json"),
    BadInput("Flux IP-Adapter on SD3.5", "StyleStudioCrossAdaINDiTIPAdapter", ("InstantX's SD3.5-Large IP-Adapter", "Flux only"),
             ("9.ipadapter_file=flux-ip-adapter_standin.safetensors",), workflow="stylestudio_sd35_ipadapter.json"),
    BadInput("CLIP ViT-L for the SD3.5 IP-Adapter", "StyleStudioCrossAdaINDiTIPAdapter", ("1152-wide", "sigclip_vision_patch14_384"),
             ("4.clip_name=clip_vision_vitl_standin.safetensors",), workflow="stylestudio_sd35_ipadapter.json"),
    # VCT. The fusion has no steps, CFG or latent-size inputs: it takes them from the inversion, so only the MODEL can
    # differ; another step count, CFG or size is a new inversion.
    BadInput("VCT inversion from another MODEL", "VCTFusion", ("inversion was made with another MODEL", "same MODEL"),
             change=vct_model(merged), workflow=VCT),
    BadInput("VCT inversion on another noise schedule", "VCTFusion", ("another noise schedule",),
             change=vct_model(zero_terminal_snr), workflow=VCT),
    BadInput("VCT NaN content latent", "VCTContentInversion", ("content latent", "NaN"), change=vct_nan_latent, workflow=VCT),
    BadInput("VCT reference batch of 2", "VCTConceptInversion", ("one image (a batch of 1)", "(2, 64, 64, 3)"),
             change=vct_reference_batch, workflow=VCT),
    BadInput("VCT on a DiT (Flux)", "VCTContentInversion", ("SD1.5/SDXL UNet", "Flux"), change=vct_flux_model, workflow=VCT),
    BadInput("VCT SDXL concept on SD1.5", "VCTFusion", ("SDXL embedding (clip_l + clip_g)", "no clip_g"),
             ("9.concept=embedding:sdxl_concept_standin",), workflow=VCT),
    BadInput("VCT missing concept", "VCTFusion", ("'embedding:no_such_concept' is not an embedding",),
             ("9.concept=embedding:no_such_concept",), workflow=VCT),
]


@pytest.fixture(scope="module")
def foreign_checkpoint(comfy_server) -> Path:
    """A safetensors file in models/stylemamba that some other tool wrote (no StyleMamba metadata)."""
    import torch
    from safetensors.torch import save_file

    path = comfy_server.base / "models" / "stylemamba" / "not_stylemamba.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(path))
    return path


@pytest.fixture(scope="module")
def sdxl_embedding(comfy_server) -> Path:
    """An SDXL textual inversion (clip_l + clip_g, as SDXL files are stored) in models/embeddings."""
    import torch
    from safetensors.torch import save_file

    path = comfy_server.base / "models" / "embeddings" / "sdxl_concept_standin.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"clip_l": torch.randn(2, 768), "clip_g": torch.randn(2, 1280)}, str(path))
    return path


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=[b.name for b in BAD_INPUTS])
def test_bad_input_is_refused_with_a_clear_message(comfy_server, foreign_checkpoint: Path, sdxl_embedding: Path,
                                                   bad: BadInput, tmp_path: Path, tier_report: list[str]) -> None:
    base = bad.workflow
    fitted = base == "text_style_transfer.json"
    changes = [change for change in (TWINS.get(base), load_fitted_model if fitted else None, bad.change) if change is not None]
    workflow = edited(tmp_path, base, lambda graph: [change(graph) for change in changes]) if changes else REPO / "workflows" / base
    result = queue(comfy_server, workflow, (*(FITTED_RECIPE if fitted else RECIPES[base]), *bad.overrides))
    assert not result.ok, f"{bad.name} was accepted: {result.line}"
    error = result.error
    shown = f"{error['exception_type']}: {error['exception_message'].strip()}"
    tier_report.append(f"bad input {bad.name!r} -> {error['node_type']}: {shown}")
    print(f"{bad.name}: {shown}")
    assert error["node_type"] == bad.node_type
    assert "/" not in error["exception_type"] and "." not in error["exception_type"]
    assert all(word.lower() in error["exception_message"].lower() for word in bad.expected), shown
    assert system_stats(comfy_server)["system"]["comfyui_version"]  # the server still answers


def system_stats(server) -> dict:
    with urllib.request.urlopen(server.url + "/system_stats", timeout=30) as answer:
        return json.loads(answer.read())


def test_missing_checkpoint_is_rejected_naming_the_input_and_the_choices(comfy_server, tmp_path: Path,
                                                                          tier_report: list[str]) -> None:
    workflow = edited(tmp_path, "text_style_transfer.json", load_fitted_model)
    result = queue(comfy_server, workflow, (*FITTED_RECIPE, "3.checkpoint=missing.safetensors"))
    tier_report.append(f"bad input 'missing checkpoint' -> {result.line[:400]}")
    print(f"missing checkpoint: {result.line[:400]}")
    assert not result.ok and "rejected" in result.line
    assert "checkpoint: 'missing.safetensors' not in ['new (untrained)', " in result.line  # the choices follow


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.safetensors")}


def cancelled_run(server, workflow: Path, overrides: tuple[str, ...], step: re.Pattern, log_start: int) -> str:
    """Queue ``workflow``, press Cancel (POST /interrupt, as the browser does) once ``step`` shows in the server log
    after ``log_start``, and return run_workflow.py's line."""
    run = subprocess.Popen(run_workflow(server.url, workflow, overrides), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + QUEUE_TIMEOUT_S
        while not step.search(server.log_text()[log_start:]):
            assert run.poll() is None, f"the workflow ended before {step.pattern}: {run.stdout.read()}"
            assert time.monotonic() < deadline, f"no {step.pattern} logged in time"
            time.sleep(0.5)
        server.post("/interrupt")
        return run.communicate(timeout=QUEUE_TIMEOUT_S)[0].strip()
    finally:
        run.kill()


def last_history(server) -> dict:
    with urllib.request.urlopen(server.url + "/history", timeout=30) as answer:
        return list(json.loads(answer.read()).values())[-1]


def test_cancel_during_training_keeps_the_best_model(comfy_server, tier_report: list[str]) -> None:
    """Cancel (``/interrupt``) after the first fit step: the best model so far lands in models/stylemamba."""
    from comfyui_stylemamba.stylemamba.checkpoint import read_metadata

    folder = comfy_server.base / "models" / "stylemamba"
    before, log_start = digests(folder), len(comfy_server.log_text())
    overrides = ("2.vae_name=sd_vae_standin.safetensors", "3.iterations=10000", "3.max_resolution=64")
    line = cancelled_run(comfy_server, REPO / "workflows" / "train_and_apply_style.json", overrides, FIT_STEP, log_start)
    assert not line.startswith("ok "), line
    after = digests(folder)
    assert {name: after[name] for name in before} == before, "an existing checkpoint was overwritten"
    new = sorted(set(after) - set(before))
    log = comfy_server.log_text()[log_start:]
    said = [line for line in log.splitlines() if "TrainStyleMamba:" in line and "%|" not in line]
    tier_report.append(f"Cancel during TrainStyleMamba: new checkpoints {new}; log: {said}")
    assert len(new) == 1, new
    metadata = read_metadata(folder / new[0])
    assert json.loads(metadata["training"])["stopped_early"] is True
    assert new[0] in log, "the log does not say where the model was written"
    last = last_history(comfy_server)
    assert any(new[0] in str(text) for text in last["outputs"].get("3", {}).get("text", [])), last["outputs"]


def vct_step(node: str, done: str = "[1-9]\\d*") -> re.Pattern:
    """The node's console bar (tqdm) with ``done`` steps."""
    return re.compile(rf"{node}:\s*\d+%\|[^|]*\|\s*{done}/\d+")


def interrupted(entry: dict) -> bool:
    """The history entry ended by Cancel, not by an error."""
    kinds = [message[0] for message in entry["status"]["messages"]]
    return "execution_interrupted" in kinds and "execution_error" not in kinds


def test_cancel_during_vct_concept_inversion_writes_the_best_vectors_beside_the_users_file(comfy_server,
                                                                                          tier_report: list[str]) -> None:
    """Cancel after a concept step: the best vectors so far are written under a free name (reported in the node's
    text and the log); the user's embedding of the asked name is left as it was."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    folder = comfy_server.base / "models" / "embeddings"
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"emb_params": torch.ones(2, 768)}, str(folder / "vct_cancel.safetensors"))  # the user's file
    before, log_start = digests(folder), len(comfy_server.log_text())
    overrides = (*RECIPES[VCT], "7.steps=10000", "7.embedding_name=vct_cancel")
    line = cancelled_run(comfy_server, REPO / "workflows" / VCT, overrides, vct_step("VCTConceptInversion"), log_start)
    assert not line.startswith("ok "), line
    after = digests(folder)
    assert {name: after[name] for name in before} == before, "an existing embedding was overwritten"
    assert sorted(set(after) - set(before)) == ["vct_cancel_00001.safetensors"]
    with safe_open(str(folder / "vct_cancel_00001.safetensors"), "pt") as handle:
        meta = json.loads(handle.metadata()["vct"])
        assert list(handle.keys()) == ["emb_params"] and handle.get_tensor("emb_params").shape == (3, 768)
    assert meta["stopped_early"] is True and 1 <= meta["steps_done"] < 10000
    last = last_history(comfy_server)
    shown = last["outputs"].get(str(VCT_CONCEPT), {}).get("text", [])
    tier_report.append(f"Cancel during VCTConceptInversion: {shown}")
    assert interrupted(last), last["status"]
    assert len(shown) == 1 and shown[0].startswith(f"cancelled after {meta['steps_done']} steps, best so far")
    assert shown[0].endswith("written to vct_cancel_00001.safetensors") and "vct_cancel_00001.safetensors" in \
        comfy_server.log_text()[log_start:]


def test_cancel_during_vct_null_text_optimisation_stops_within_an_inner_step(comfy_server, tier_report: list[str]) -> None:
    """Cancel once DDIM inversion is done (4 of 8 progress steps): the null-text optimisation (200 inner steps per
    step here) stops at the inner step it is in; the prompt ends as cancelled and the next one runs."""
    log_start = len(comfy_server.log_text())
    overrides = (*RECIPES[VCT], "8.steps=4", "8.inner_steps=200")
    start = time.perf_counter()
    line = cancelled_run(comfy_server, REPO / "workflows" / VCT, overrides, vct_step("VCTContentInversion", "[4-8]"),
                         log_start)
    assert not line.startswith("ok "), line
    last = last_history(comfy_server)
    assert interrupted(last), last["status"]
    log = comfy_server.log_text()[log_start:]
    # without the check after every inner step, Cancel would wait out the first step's 200 inner steps and show 5/8
    assert not vct_step("VCTContentInversion", "[5-8]").search(log), "the null-text optimisation finished a step"
    tier_report.append(f"Cancel during VCT null-text: interrupted after {time.perf_counter() - start:.1f} s wall")
    again = queue(comfy_server, REPO / "workflows" / VCT, RECIPES[VCT])  # the server runs the next prompt
    assert again.ok, again.line
