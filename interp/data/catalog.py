"""Pinned upstream files (mirror folder, path, sha256, row count, download URLs) from each PROVENANCE.md."""

from __future__ import annotations

from interp.data.fetch import FileSpec


def _gh(repo: str, commit: str, path: str) -> str:
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


_ADVBENCH = ("llm-attacks/llm-attacks", "no-touch-fish/LLM-attack-ignore")
_ADVBENCH_COMMIT = "0f505d82e25c15a83b6954db28191b69927a255d"
ADVBENCH_BEHAVIORS = FileSpec(
    "advbench", "harmful_behaviors.csv",
    "6cd1a5c63c07610d7eb67307772ee5606017ee950b5770ab288a2c487489d3e1",
    tuple(_gh(r, _ADVBENCH_COMMIT, "data/advbench/harmful_behaviors.csv") for r in _ADVBENCH), rows=520)

JBB_HARMFUL = FileSpec(
    "jailbreakbench_behaviors", "harmful-behaviors.csv",
    "4a8ec6832056b631eb092dccc60d37a61c3d441268268888b3d006288afeffa1",
    (_gh("javyduck/any-depth-alignment", "e7205aa058108b081c96eda162e4f3477eaced66",
         "third_party/llm_attacks/data/jailbreakbench.csv"),
     "https://huggingface.co/datasets/JailbreakBench/JBB-Behaviors/resolve/main/data/harmful-behaviors.csv"),
    rows=100)
JBB_BENIGN = FileSpec(
    "jailbreakbench_behaviors", "benign-behaviors.csv",
    "c0958ac974fb6629527aeff6c81c88154a877190d07313ac377d36951fde5d3e",
    (_gh("Baisayan/hack", "2b37da1c255e43e16a74ecd3e51c99ea992b5237", "data/benign-behaviors.csv"),
     "https://huggingface.co/datasets/JailbreakBench/JBB-Behaviors/resolve/main/data/benign-behaviors.csv"),
    rows=100)

XSTEST = FileSpec(
    "xstest", "xstest_prompts.csv", "11783fb294ed017473ee53c207d71f2161c7672c8d0b037501e78387f801cb5a",
    (_gh("paul-rottger/exaggerated-safety", "d7bb5bd738c1fcbc36edd83d5e7d1b71a3e2d84d", "xstest_prompts.csv"),),
    rows=450)


def _harmbench(name: str, sha: str, rows: int) -> FileSpec:
    path = f"data/behavior_datasets/{name}"
    return FileSpec("harmbench", name, sha, (
        _gh("centerforaisafety/HarmBench", "8e1604d1171fe8a48d8febecd22f600e462bdcdd", path),
        _gh("busycalibrating/AdversariaLLM", "a4b57364bc2b0785bd0e6f79eec4948e3991b8b0", path)), rows=rows)


HARMBENCH = (
    _harmbench("harmbench_behaviors_text_test.csv",
               "75d257b3e7428c52eb7b0154318f455af3e01b09a3794b5e2f3d36054f3c0e29", 320),
    _harmbench("harmbench_behaviors_text_val.csv",
               "7bfaaa5e2b9b95002c89e2d33c019f58e9e8496e2fc65d368f1eeb8179e69534", 80),
)


def _alpaca(generator: str, sha: str) -> FileSpec:
    path = f"{generator}/model_outputs.json"
    return FileSpec("alpaca_eval_outputs", path, sha, (
        _gh("tatsu-lab/alpaca_eval", "cd543a149df89434d8a54582c0151c0b945c3d20", f"results/{path}"),), rows=805)


ALPACA_GPT4 = _alpaca("gpt4_1106_preview", "83db546b872ddebee8965fd05fa48461ee3c32bc695c62fb57f2d214ff741ec4")
ALPACA_DAVINCI = _alpaca("text_davinci_003", "af0bc112f08c88bf589bbfe6fc1036806d0a0f6fec9c4d5a4db860f5afe73b4b")

_JBB_ARTIFACT_SHAS = {
    "DSN/white_box/llama-2-7b-chat-hf": "9bcdbe88b18e729ca9abf593d3e5141e7958aff0eb3a0e62ae92b8f64acbdcd9",
    "DSN/white_box/vicuna-13b-v1.5": "ea0a5f7331baf595fb6e6925423f43367cbce8da9273ce93c6a03e2201e3373d",
    "GCG/transfer/gpt-3.5-turbo-1106": "ff185b1dc73732d830e96efdb3f4a92294ee72e9c88a1800b1d11d4ecb3d4cdf",
    "GCG/transfer/gpt-4-0125-preview": "af54543a06e3702256315517ee6e6a7b0edf182dd2c6d938216fa58cbea8de23",
    "GCG/white_box/llama-2-7b-chat-hf": "f76cbaf899c79ca8eed6a6ed26d6f8789933c5595a9a5ee028e305dec4dd95f7",
    "GCG/white_box/vicuna-13b-v1.5": "9eff8b6f78cae002737868ca8cdd886be5afcd1cbbbe4cf51ff837bc688b01b1",
    "JBC/manual/gpt-3.5-turbo-1106": "5999b8f2fc5e85fd4f7d6553abaeaa66f2dc10c5354faa41622e511c08eab871",
    "JBC/manual/gpt-4-0125-preview": "1785f7cf838522461b5b9af3fa606715ecf55c194581f4c8c5c9f1945b59db05",
    "JBC/manual/llama-2-7b-chat-hf": "1607a5a5b9f50abc7f2ff9e07b7257dfde7228b88cfdf73c20f5f56108ffdd23",
    "JBC/manual/vicuna-13b-v1.5": "1d5df5aa451c3d1bb8a4c048a7b2e1e6132e72f2970cb9d94ffc77f44e0edb39",
    "PAIR/black_box/gpt-3.5-turbo-1106": "49e007ce488e606cede7ffc8b022e35080b7f3870956e4cb2423d9b42749c78f",
    "PAIR/black_box/gpt-4-0125-preview": "6dd214eee78184daf048ac8af166641724b49fd25bc831e5d7201469c162004d",
    "PAIR/black_box/llama-2-7b-chat-hf": "02819296c5d992568d732d37813b2ce34624068a20f21025c04c04d52820b029",
    "PAIR/black_box/vicuna-13b-v1.5": "18b101386419a98fbdf45cb987069f83af3a40d5e0f7f0d32c4e9dc5ecc049b4",
    "prompt_with_random_search/black_box/gpt-3.5-turbo-1106":
        "d4a0691eda37b02dc948b6d6d08460f7d5cd3f15099121b388a58634ffb7bd76",
    "prompt_with_random_search/black_box/gpt-4-0125-preview":
        "4a0573dba6823c676cab99ed54b8191244080883948270fac9b75255b7c69206",
    "prompt_with_random_search/black_box/llama-2-7b-chat-hf":
        "45df98af6e1c0e35747f6b9c80cdc606e96c76a511e09a1a49ad5b00cfb51c0a",
    "prompt_with_random_search/black_box/vicuna-13b-v1.5":
        "9d87a56659f617438feb5770bb2c8e4c2dbbd1bd62964f2c1a8775988017ac5d",
}
JBB_ARTIFACTS = tuple(
    FileSpec("jbb_artifacts", f"attack-artifacts/{key}.json", sha,
             (_gh("JailbreakBench/artifacts", "909e68c01d94222b8ad2e397a017e2e12e2adb73",
                  f"attack-artifacts/{key}.json"),), rows=100)
    for key, sha in _JBB_ARTIFACT_SHAS.items())

_SHADOW_SHAS = {
    "falcon-7b-instruct/heldout_falcon_7b.csv":
        ("93669b0e09d778f43add4f759aff3a7704b950459c7a96d7b6a5ef44effd96e1", 200),
    "internLM-7b-chat/heldout_internlm_7b_instruct.csv":
        ("9b8ae1769f82c7f3471c4c98164b4e40ea7900694e6aca0f512fbd0776d77c2f", 200),
    "llama2-13b-chat/heldout_llama2_13b.csv":
        ("3d95653c124957295903d6d98982820a78e53265e4d79c7361fb50a14d74e5df", 200),
    "vicuna-13b-v1.5/heldout_vicuna_13b.csv":
        ("a7c0a9b60e4fcb341e5ce94021d78e727714565ea9b8cb612eb49f69a91c26e4", 200),
    "llama2-13b-chat/Malicious_llam2_13b.csv":
        ("f9b6dd25549bf74fe80aa6e12c26b0a7819d5d9dd27222d437f738546b868ac7", 100),
    "llama2-13b-chat/PhysicalSafetyUnsafe_llam2_13b.csv":
        ("913e5ba984b77b913204aadeb7a84d81933efb3c0ced19b4ac00e53a65674c9e", 100),
    "llama2-13b-chat/CoNa_llam2_13b.csv":
        ("71aea32afb5123c355993f49e993bb1c7b86dedb851aa0020ec0f33c8594bd26", 178),
    "llama2-13b-chat/Controversial_llam2_13b.csv":
        ("f9df9d89f4f922586a63f610f0fbcaa006174bd8dcd4065f39cb56d8f03e0274", 40),
}
SHADOW_ALIGNMENT = tuple(
    FileSpec("shadow_alignment_outputs", f"outputs/{path}", sha,
             (_gh("BeyonderXX/ShadowAlignment", "603b81e33f0c380488d4d34cb254eccb3099100e", f"outputs/{path}"),),
             rows=rows)
    for path, (sha, rows) in _SHADOW_SHAS.items())
