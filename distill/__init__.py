"""The neural side of NeSy Studio: data, teacher, student training, inference, evaluation, jobs, CLI."""
