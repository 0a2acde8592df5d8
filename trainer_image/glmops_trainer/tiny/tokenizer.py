"""A small GLM-4.7-shaped tokenizer, trained in-process, for tests and the local demo.

It has what the real GLM-4.7 tokenizer has, only smaller: byte-level BPE behind GLM-4's
pre-tokenizer regex, GLM's 36 added tokens placed right after the learned vocabulary in GLM's
order (`<|endoftext|>` first, exactly as ids 151329-151364 of the real vocabulary), eos/pad set to
`<|endoftext|>`, and the official chat template. No file is downloaded except the chat template,
which comes from the llama.cpp tree (see `glmops_trainer.llamacpp_src`).
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# GLM-4's split regex: the same expression as llama.cpp's LLAMA_VOCAB_PRE_TYPE_CHATGLM4 (tokenizer
# pre-type "glm4") and the `Split` pre-tokenizer of the GLM-4.5/4.7 tokenizer.json.
GLM4_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# The added tokens of GLM-4.5/4.6/4.7 in id order (151329 ... 151364 in the real vocabulary).
# The first 18 are the tokenizer's special tokens (`extra_special_tokens` in its config); the rest
# are plain added tokens, so decoding with skip_special_tokens=True keeps `<think>`, tool-call
# markup and the like, which reasoning and tool-call parsers read.
GLM_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>",
    "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
    "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>",
    "<|begin_of_audio|>", "<|end_of_audio|>", "<|begin_of_transcription|>", "<|end_of_transcription|>",
)
GLM_ADDED_TOKENS: tuple[str, ...] = (
    "<|code_prefix|>", "<|code_middle|>", "<|code_suffix|>",
    "<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
    "<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>",
    "/nothink", "<|begin_of_box|>", "<|end_of_box|>", "<|image|>", "<|video|>",
)
EOS_TOKEN = "<|endoftext|>"
GENERATION_STOP_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|user|>", "<|observation|>")
"""What ends generation for GLM-4.7 (its generation_config.json lists these three ids as eos)."""

# Built-in training text: prose, code, JSON and tool-call vocabulary of the kind the tests and the
# demo use, so that common words become single tokens and sequences stay short.
_CORPUS = r'''
The assistant helps the user with questions about weather, payments, invoices, refunds and code.
You are a helpful assistant. Answer briefly and call a tool when you need fresh data.
What is the weather in Paris today? It is sunny in Paris, with a temperature of 21 degrees Celsius.
What is the weather in Berlin? Berlin is cloudy and cold: 9 degrees Celsius, light rain expected.
Compare the weather in Paris and Berlin, then recommend where to go this weekend.
Paris is warmer than Berlin, so Paris is the better choice for a walk by the river.
I should check the weather for both cities. Let me call get_weather for Paris and for Berlin.
The user wants the temperature in both cities; I will call the weather tool twice.
Both results are in. Paris is 21 degrees and sunny; Berlin is 9 degrees with rain.
Thanks! And what should I pack? Pack a light jacket for Paris and an umbrella for Berlin.
The user asks what to pack; the forecast says rain in Berlin, so an umbrella is useful.
Please refund order 1042. The refund for order 1042 has been issued to the original card.
Find the invoice for customer 77 and tell me the total amount due in euros.
The invoice total is 1,250.00 EUR, due on 2025-06-30. The status of the payment is pending.
Check the status of payment pay_9f3 and cancel it if it is still pending.
The payment was cancelled. No money was taken from the account.
Summarize the conversation so far in one sentence.
Write a Python function that adds two numbers and returns the result.
Explain what a list comprehension is, with a short example.
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with one step.
Hello, how are you? I am fine, thank you. Good morning, good evening, good night.
Reason step by step before you answer. First, think; then answer the question clearly.
Let me think about this. The question is simple, so the answer is short.
I need to look up the data first. The tool returned an error, so I will try again.
# Tools
You may call one or more functions to assist with the user query.
You are provided with function signatures within <tools></tools> XML tags.
For each function call, output the function name and arguments within the following XML format.
get_weather get_forecast search_web send_email lookup_invoice refund_order get_payment_status
location city unit celsius fahrenheit query results order_id customer_id amount currency
{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city.", "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}
{"type": "function", "function": {"name": "refund_order", "description": "Refund an order.", "parameters": {"type": "object", "properties": {"order_id": {"type": "integer"}}, "required": ["order_id"]}}}
{"city": "Paris", "temperature": 21, "condition": "sunny", "unit": "celsius"}
{"city": "Berlin", "temperature": 9, "condition": "rain", "unit": "celsius"}
{"order_id": 1042, "status": "refunded", "amount": 59.9, "currency": "EUR"}
{"error": "not found", "code": 404, "message": "No invoice with that number"}
{"messages": [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}]}
{"role": "assistant", "reasoning_content": "The user greets me.", "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}
{"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "{\"temperature\": 21}"}
{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
{"instruction": "Translate to French", "input": "Good morning", "output": "Bonjour"}
{"text": "Plain text for language modelling."}
def add(a: int, b: int) -> int:
    """Return the sum of a and b."""
    return a + b


def get_weather(city: str, unit: str = "celsius") -> dict[str, object]:
    response = client.get(f"/weather/{city}", params={"unit": unit})
    if response.status_code != 200:
        raise RuntimeError(f"weather service failed: {response.text}")
    return response.json()


class Invoice:
    def __init__(self, number: str, total: float) -> None:
        self.number = number
        self.total = total

    def is_paid(self) -> bool:
        return self.total == 0


for index, value in enumerate(values):
    if value is None:
        continue
    print(index, value)

squares = [x * x for x in range(10) if x % 2 == 0]
import json
import os
from pathlib import Path
with open(path, encoding="utf-8") as handle:
    data = json.load(handle)
return {"status": "ok", "items": [1, 2, 3], "count": 3, "next": null, "done": true, "ratio": 0.5}
SELECT id, name, total FROM invoices WHERE status = 'pending' ORDER BY total DESC LIMIT 10;
kubectl apply -f finetune.yaml && kubectl get finetunejobs -n ml
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 21 42 100 256 512 1024 2048 4096 8192 2025 3.14 0.05
Punctuation: ( ) [ ] { } < > , . ; : ! ? ' " - _ = + * / \ | @ # $ % ^ & ~ ` -> => == != <= >=
The model reads the whole conversation, including its own earlier reasoning, before answering.
Preserved thinking keeps the reasoning of every assistant turn in the history.
Training uses the assistant turns only; system, user and tool messages are context.
It's, I'm, you're, we've, they'll, he'd, don't, can't, won't, isn't, aren't, didn't.
Merci beaucoup. Bonjour le monde. Guten Tag. Hallo Welt. Danke schön. ¿Qué tal? Olá, mundo.
A platform team runs the operator on a Kubernetes cluster with GPU nodes. Each fine-tuning job
creates one trainer pod, which downloads the base model, validates the dataset, renders every sample
with the chat template, trains low-rank adapters, writes checkpoints and finally exports the weights.
When a node fails, the job restarts from the latest checkpoint instead of from the beginning.
Quantization shrinks the weights to four or eight bits so that the model fits on smaller machines.
The server answers requests over HTTP; clients send messages and receive streamed completions.
Every error message says what went wrong, where it happened, and how to fix the problem.
Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday. January, February, March, April,
May, June, July, August, September, October, November, December. Spring, summer, autumn, winter.
London, Madrid, Rome, Vienna, Amsterdam, Lisbon, Prague, Warsaw, Tokyo, Seoul, Beijing, Sydney.
red orange yellow green blue purple black white grey brown pink; small large tiny huge quick slow.
Apples, bananas, bread, cheese, coffee, tea, water, milk, rice, soup, salad, chicken, fish, eggs.
The library opens at nine in the morning and closes at six in the evening, except on holidays.
She wrote a letter to her brother, who lives in another country and works as an engineer.
Scientists measure the distance between stars in light years; one light year is very far away.
Students learn mathematics, physics, chemistry, biology, history, geography, music and art.
A function takes arguments, performs a computation, and returns a value or raises an exception.
Variables hold values; loops repeat work; conditions choose between branches; modules group code.
Tests check behaviour: given an input, the code must produce the expected output every time.
The database stores customers, orders, products, payments and shipments in separate tables.
Customers can pay by card, bank transfer or invoice; refunds usually take three to five days.
Our support team answers tickets within one business day and escalates urgent problems quickly.
The report shows revenue, costs, profit and growth for each quarter of the financial year.
Security matters: never log passwords, tokens, secrets or personal data in plain text.
async def fetch(session, url):
    async with session.get(url, timeout=30) as response:
        response.raise_for_status()
        return await response.text()

try:
    result = compute(values)
except ValueError as error:
    logger.warning("invalid input: %s", error)
    result = None
finally:
    cleanup()

const total = items.reduce((sum, item) => sum + item.price * item.quantity, 0);
function greet(name) { return `Hello, ${name}!`; }
fn main() { let message = String::from("hello"); println!("{}", message); }
apiVersion: glmops.io/v1alpha1
kind: FineTuneJob
metadata:
  name: payments-coder
  namespace: ml
spec:
  model:
    variant: flash
  training:
    epochs: 2
    learningRate: 0.0002
    sequenceLength: 8192
'''


def build_tiny_tokenizer(
    out_dir: Path, vocab_size: int = 2048, chat_template: str | None = None
) -> PreTrainedTokenizerFast:
    """Train a GLM-shaped byte-level BPE of `vocab_size` ids in total, save it to `out_dir` and return it.

    `chat_template` defaults to the official GLM-4.7-Flash template from the llama.cpp tree.
    """
    added = GLM_SPECIAL_TOKENS + GLM_ADDED_TOKENS
    learned_size = vocab_size - len(added)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if learned_size < len(alphabet):
        raise ValueError(
            f"vocab_size={vocab_size} leaves {learned_size} ids for BPE; byte-level BPE needs at least "
            f"{len(alphabet)} plus the {len(added)} GLM tokens (use vocab_size >= {len(alphabet) + len(added)})"
        )
    if chat_template is None:
        from glmops_trainer.llamacpp_src import official_chat_template

        chat_template = official_chat_template()

    backend = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(GLM4_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=learned_size, initial_alphabet=alphabet, special_tokens=[], show_progress=False
    )
    backend.train_from_iterator(_corpus_lines(), trainer=trainer)
    # With too little text BPE stops early; the added tokens then start lower, still right after it.
    first_added_id = backend.get_vocab_size()
    for content in added:
        token = AddedToken(content, special=content in GLM_SPECIAL_TOKENS, normalized=False)
        if token.special:
            backend.add_special_tokens([token])
        else:
            backend.add_tokens([token])
    for offset, content in enumerate(added):
        if backend.token_to_id(content) != first_added_id + offset:
            raise RuntimeError(f"{content} did not get id {first_added_id + offset}; the learned vocabulary contains it")

    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]  # transformers leaves __init__ untyped
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        extra_special_tokens=list(GLM_SPECIAL_TOKENS),
        chat_template=chat_template,
        clean_up_tokenization_spaces=False,
        model_max_length=131072,
        padding_side="left",
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def generation_stop_token_ids(tokenizer: PreTrainedTokenizerFast) -> list[int]:
    """Ids that end generation, as GLM-4.7's generation_config.json lists them: endoftext, user, observation."""
    ids = [tokenizer.convert_tokens_to_ids(token) for token in GENERATION_STOP_TOKENS]
    return [token_id for token_id in ids if isinstance(token_id, int)]


def _corpus_lines() -> list[str]:
    # Repeat the corpus so that pair counts favour the phrases it contains over one-off accidents.
    lines = [line for line in _CORPUS.splitlines(keepends=True) if line.strip()]
    return lines * 3
