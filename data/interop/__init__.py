"""Labels in and out of other labeling tools: Label Studio (`labelstudio`) and Argilla
(`argilla`), through one typed record (`common.ExternalItem`) that both parsers produce and
both writers consume, so a format only maps its own fields (docs/interop.md)."""
