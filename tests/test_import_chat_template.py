"""`eexp import-model --chat-template FILE` (issue 34): a base model's GGUF has no chat template, which eexp trains
and acts through; the option gives one. Checked on a tiny model exported without its template."""

from __future__ import annotations

import json
import shutil

import yaml
from click.testing import CliRunner

from eexp.cli import cli

GEMMA_LIKE = (
    "{{ bos_token }}{%- for m in messages -%}"
    "{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\\n' + m['content'] "
    "+ '<end_of_turn>\\n' }}{%- endfor -%}{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}"
    "{%- endif -%}"
)


def _base_gguf(tiny_checkpoint, tmp_path):
    """The tiny checkpoint exported with no chat template, as a base model's GGUF comes."""
    ckpt = tmp_path / "base"
    shutil.copytree(tiny_checkpoint, ckpt)
    (ckpt / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((ckpt / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (ckpt / "tokenizer_config.json").write_text(json.dumps(config))
    out = tmp_path / "base.q8_0.gguf"
    result = CliRunner().invoke(cli, ["export", str(ckpt), "-o", str(out)])
    assert result.exit_code == 0, result.output
    import gguf

    assert "tokenizer.chat_template" not in gguf.GGUFReader(str(out)).fields
    return out


def test_a_base_gguf_imports_with_the_template_given(tiny_checkpoint, tmp_path):
    from transformers import AutoTokenizer

    base = _base_gguf(tiny_checkpoint, tmp_path)
    runner = CliRunner()
    result = runner.invoke(cli, ["import-model", str(base), "-o", str(tmp_path / "plain")])
    assert result.exit_code == 1 and "has no chat template" in result.output and "--chat-template" in result.output
    assert not (tmp_path / "plain").exists()

    template = tmp_path / "gemma.jinja"
    template.write_text(GEMMA_LIKE)
    result = runner.invoke(
        cli, ["import-model", str(base), "--chat-template", str(template), "-o", str(tmp_path / "imported")]
    )
    assert result.exit_code == 0, result.output
    folder = tmp_path / "imported"
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.chat_template == GEMMA_LIKE
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n")
    provenance = yaml.safe_load((folder / "config.yaml").read_text())
    import hashlib

    assert provenance["chat_template"] == str(template.resolve())
    assert provenance["chat_template_sha256"] == hashlib.sha256(GEMMA_LIKE.encode()).hexdigest()

    # into the cache: a folder of its own, never taken for the file's plain import
    from eexp.models.import_gguf import cached_path, import_gguf

    cached = import_gguf(base, chat_template=template)
    assert cached != cached_path(base) and AutoTokenizer.from_pretrained(cached).chat_template == GEMMA_LIKE


def test_a_template_file_that_is_not_jinja_names_its_line(tiny_gguf, tmp_path):
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}\n{{ m['content'] }\n{% endfor %}\n")
    result = CliRunner().invoke(
        cli, ["import-model", str(tiny_gguf), "--chat-template", str(bad), "-o", str(tmp_path / "out")]
    )
    assert result.exit_code == 1 and f"{bad}:2: the chat template is not valid Jinja" in result.output
    result = CliRunner().invoke(
        cli, ["import-model", str(tiny_gguf), "--chat-template", str(tmp_path / "none"), "-o", str(tmp_path / "out")]
    )
    assert result.exit_code == 1 and "no such chat template file" in result.output
    assert not (tmp_path / "out").exists()
